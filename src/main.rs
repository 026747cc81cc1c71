use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = flashsale::cli::Cli::parse();
    std::process::exit(flashsale::cli::run(cli).await);
}
