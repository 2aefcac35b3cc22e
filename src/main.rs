use clap::Parser;

fn main() {
    let cli = uprun::cli::Cli::parse();
    match uprun::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("{}", uprun::progress::error_text(&e));
            std::process::exit(e.exit_code());
        }
    }
}
