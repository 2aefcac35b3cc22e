use clap::Parser;

fn main() {
    std::process::exit(uprun::main(uprun::cli::Cli::parse()));
}
