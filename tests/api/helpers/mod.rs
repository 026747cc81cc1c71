//! Helpers only the tests of this binary use; those the other binaries
//! share are in `tests/common`.

pub mod browser;
pub mod proxy;
