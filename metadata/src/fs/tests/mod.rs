//! The file tree, on every backend (`testing::each_store`).

mod locks;
mod names;
mod orphans;
mod release;
