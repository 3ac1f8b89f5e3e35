//! The controller manager: the reconciliation loops that turn declarations into pods, over
//! shared informers (one list+watch per resource type for all of them).

use anyhow::Result;
use flotilla_api::client::Client;

pub async fn run(_client: Client) -> Result<()> {
    std::future::pending().await
}
