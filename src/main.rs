use clap::Parser;

// Each request allocates small, short-lived buffers on both runtime threads;
// mimalloc's per-thread free lists take a third off what glibc's malloc
// costs there (BENCHMARKS.md, section C).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let cli = flashsale::cli::Cli::parse();
    std::process::exit(flashsale::cli::run(cli).await);
}
