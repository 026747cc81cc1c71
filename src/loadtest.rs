pub use self::opts::Options;
mod opts {
    #[derive(Debug, clap::Args)]
    pub struct Options {}
}
pub async fn run(_s: &crate::config::Settings, _o: Options) -> i32 {
    0
}
