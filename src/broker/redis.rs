//! The Redis broker (cluster mode): not built yet. Until it is, a node with `CONFAB_REDIS_URL`
//! set refuses to start rather than pretend to be part of a cluster.

use std::sync::Arc;

use secrecy::SecretString;

use super::{Broker, BrokerError, Snapshot};
use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::protocol::RoomName;
use crate::user::Identity;

/// The cluster-mode broker; cannot be constructed yet.
pub enum RedisBroker {}

impl RedisBroker {
    /// Always fails: cluster mode is not implemented yet.
    ///
    /// # Errors
    /// Always.
    pub async fn start(
        _url: &SecretString,
        _hub: Arc<Hub>,
        _config: &Config,
        _metrics: Metrics,
    ) -> anyhow::Result<Self> {
        anyhow::bail!("cluster mode is not available yet: unset CONFAB_REDIS_URL")
    }
}

impl Broker for RedisBroker {
    async fn publish(&self, _: &RoomName, _: &Identity, _: &str) -> Result<u64, BrokerError> {
        match *self {}
    }

    async fn join(
        &self,
        _: &RoomName,
        _: &Identity,
        _: Option<u64>,
    ) -> Result<Snapshot, BrokerError> {
        match *self {}
    }

    async fn leave(&self, _: &RoomName, _: &Identity) {
        match *self {}
    }

    fn is_ready(&self) -> bool {
        match *self {}
    }

    async fn shutdown(&self) {
        match *self {}
    }
}
