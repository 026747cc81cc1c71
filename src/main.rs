use clap::Parser;

// Each request allocates small, short-lived buffers on both runtime threads;
// with mimalloc's per-thread free lists the allocator's share of the
// gateway's CPU fell from ~18% (glibc) to ~8% (BENCHMARKS.md, section C).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let cli = flashsale::cli::Cli::parse();
    std::process::exit(flashsale::cli::run(cli).await);
}
