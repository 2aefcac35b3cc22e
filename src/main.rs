use clap::Parser;

fn main() {
    let cli = uprun::cli::Cli::parse();
    match uprun::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            if e.is_rendered() {
                eprintln!("{e}");
            } else {
                eprintln!("error: {e}");
            }
            std::process::exit(e.exit_code());
        }
    }
}
