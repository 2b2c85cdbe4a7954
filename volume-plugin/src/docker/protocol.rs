//! Request bodies of Docker's volume plugin protocol (v1). Responses are
//! built with `serde_json::json!` where they are answered.

use std::collections::HashMap;

use serde::Deserialize;

/// Content type of every request and response.
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

/// Largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Create {
    pub name: String,
    #[serde(default)]
    pub opts: Option<HashMap<String, String>>,
}

/// Remove, Path and Get.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Named {
    pub name: String,
}

/// Mount and Unmount.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Caller {
    pub name: String,
    #[serde(rename = "ID")]
    pub id: String,
}
