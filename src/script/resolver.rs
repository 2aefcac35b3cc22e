//! Where `import` may look: the embedded `stdlib/` (`import "std/name"`) and the
//! script's own folder, nothing else. Rhai's `FileModuleResolver` accepts
//! absolute paths and `..`, so paths are checked here before anything is read.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rhai::{Engine, EvalAltResult, Module, ModuleResolver, Position, Scope, Shared, AST};

type SharedModule = Shared<Module>;

/// The bundled Rhai modules, served as `std/<name>`.
pub const STDLIB: &[(&str, &str)] = &[
    ("preflight", include_str!("../../stdlib/preflight.rhai")),
    ("cluster", include_str!("../../stdlib/cluster.rhai")),
    ("report", include_str!("../../stdlib/report.rhai")),
];

/// Source texts by source name, kept so errors can quote the offending line.
#[derive(Default, Clone)]
pub struct Sources(Arc<Mutex<HashMap<String, String>>>);

impl Sources {
    pub fn insert(&self, name: &str, text: &str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), text.to_string());
    }
    /// Every source seen so far (the procedure and the modules it imports),
    /// by name, sorted.
    pub fn all(&self) -> Vec<(String, String)> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<(String, String)> =
            map.iter().map(|(n, t)| (n.clone(), t.clone())).collect();
        all.sort();
        all
    }
    pub fn line(&self, name: &str, line: usize) -> Option<String> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(name)?
            .lines()
            .nth(line.checked_sub(1)?)
            .map(str::to_string)
    }
}

pub struct SandboxResolver {
    /// The script's own folder; `None` for bundled scripts (stdlib only).
    base: Option<PathBuf>,
    sources: Sources,
    cache: Mutex<HashMap<String, SharedModule>>,
}

impl SandboxResolver {
    pub fn new(base: Option<PathBuf>, sources: Sources) -> Self {
        SandboxResolver {
            base,
            sources,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn refuse(path: &str, why: String, pos: Position) -> Box<EvalAltResult> {
        EvalAltResult::ErrorModuleNotFound(format!("{path} ({why})"), pos).into()
    }

    /// Find the module's text and its source name.
    fn locate(&self, path: &str, pos: Position) -> Result<(String, String), Box<EvalAltResult>> {
        if let Some(name) = path.strip_prefix("std/") {
            return STDLIB
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(n, text)| (format!("std/{n}"), text.to_string()))
                .ok_or_else(|| {
                    let known: Vec<String> =
                        STDLIB.iter().map(|(n, _)| format!("std/{n}")).collect();
                    Self::refuse(
                        path,
                        format!("no such bundled module; bundled: {}", known.join(", ")),
                        pos,
                    )
                });
        }
        let Some(base) = &self.base else {
            return Err(Self::refuse(
                path,
                "bundled scripts import only `std/...` modules".into(),
                pos,
            ));
        };
        let rel = Path::new(path);
        if path.is_empty() || !crate::nodes::local_is_contained(rel) {
            return Err(Self::refuse(
                path,
                "imports must be relative to the script's folder, without `..` or an absolute path"
                    .into(),
                pos,
            ));
        }
        let mut file = base.join(rel);
        if file.extension().is_none() {
            file.set_extension("rhai");
        }
        let canon_base = base.canonicalize().unwrap_or_else(|_| base.clone());
        let canon = file
            .canonicalize()
            .map_err(|e| Self::refuse(path, format!("`{}`: {e}", file.display()), pos))?;
        if !canon.starts_with(&canon_base) {
            return Err(Self::refuse(
                path,
                "resolves outside the script's folder".into(),
                pos,
            ));
        }
        let text = std::fs::read_to_string(&canon)
            .map_err(|e| Self::refuse(path, format!("`{}`: {e}", file.display()), pos))?;
        Ok((file.display().to_string(), text))
    }

    fn compile(
        &self,
        engine: &Engine,
        path: &str,
        pos: Position,
    ) -> Result<(String, AST), Box<EvalAltResult>> {
        let (name, text) = self.locate(path, pos)?;
        self.sources.insert(&name, &text);
        let mut ast = engine.compile(&text).map_err(|e| {
            Box::new(EvalAltResult::ErrorInModule(
                name.clone(),
                Box::new(EvalAltResult::ErrorParsing(*e.0, e.1)),
                pos,
            ))
        })?;
        ast.set_source(name.as_str());
        Ok((name, ast))
    }
}

impl ModuleResolver for SandboxResolver {
    fn resolve(
        &self,
        engine: &Engine,
        _source: Option<&str>,
        path: &str,
        pos: Position,
    ) -> Result<SharedModule, Box<EvalAltResult>> {
        if let Some(m) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
        {
            return Ok(m.clone());
        }
        let (name, ast) = self.compile(engine, path, pos)?;
        let mut module = Module::eval_ast_as_new(Scope::new(), &ast, engine)
            .map_err(|e| Box::new(EvalAltResult::ErrorInModule(name.clone(), e, pos)))?;
        module.set_id(name.as_str());
        let shared: SharedModule = module.into();
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.to_string(), shared.clone());
        Ok(shared)
    }

    fn resolve_ast(
        &self,
        engine: &Engine,
        _source: Option<&str>,
        path: &str,
        pos: Position,
    ) -> Option<Result<AST, Box<EvalAltResult>>> {
        Some(self.compile(engine, path, pos).map(|(_, ast)| ast))
    }
}
