//! The file tree, on every backend (`testing::each_store`).

mod names;
mod orphans;
mod release;
