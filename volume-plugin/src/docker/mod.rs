//! Docker's volume plugin protocol: `POST /Plugin.Activate` and
//! `POST /VolumeDriver.{Create,Remove,Mount,Unmount,Path,Get,List,Capabilities}`,
//! JSON over HTTP/1.1 on a unix socket (legacy plugins are found at
//! `/run/docker/plugins/NAME.sock`). Failures come back as `{"Err": "..."}`
//! with status 500, as Docker's own plugin helpers send them.

mod driver;
mod locks;
mod options;
mod protocol;
mod server;

pub use driver::{DockerConfig, Driver};
pub use server::serve;

/// Where Docker looks for a legacy plugin named `tessera`.
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/tessera.sock";
