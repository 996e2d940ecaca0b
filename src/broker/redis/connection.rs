//! How a node talks to Redis: one server, or a Redis Cluster found from seed URLs.
//!
//! `CONFAB_REDIS_URL` names one server or lists seed nodes, comma-separated. A list is a
//! Redis Cluster; a single URL is asked (`INFO cluster`) at the first connection. Either way
//! the node's commands share one multiplexed connection ([`Commands`]): on one server a
//! [`ConnectionManager`] that reconnects by itself; on a cluster the cluster client, which
//! routes each command to the primary of its key's slot and follows slot moves and failovers.
//!
//! The cluster client also carries the node's sharded subscriptions (`SSUBSCRIBE`), whose
//! messages come back as RESP3 pushes; on one server the subscriber keeps a plain pub/sub
//! connection of its own.

use std::time::Duration;

use redis::aio::{AsyncPushSender, ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use secrecy::{ExposeSecret, SecretString};

use super::{COMMAND_TIMEOUT, MAX_BACKOFF};
use crate::broker::BrokerError;

/// The Redis a node was told to use.
#[derive(Clone)]
pub(super) struct Target {
    /// Each seed URL (one for a single server). They may hold passwords.
    urls: Vec<SecretString>,
}

/// What kind of Redis the target turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// One server: `PUBLISH`/`SUBSCRIBE` on the partitions' channels.
    Single,
    /// A Redis Cluster: `SPUBLISH`/`SSUBSCRIBE`, each partition on its slot's primary.
    Cluster,
}

impl Mode {
    /// The command the scripts publish frames with.
    pub(super) fn publish_command(self) -> &'static str {
        match self {
            Self::Single => "PUBLISH",
            Self::Cluster => "SPUBLISH",
        }
    }
}

impl Target {
    /// The target named by `CONFAB_REDIS_URL` (already checked by the configuration).
    ///
    /// # Errors
    /// When a URL cannot be parsed.
    pub(super) fn parse(setting: &SecretString) -> anyhow::Result<Self> {
        let urls: Vec<SecretString> = setting
            .expose_secret()
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(|url| SecretString::from(url.to_owned()))
            .collect();
        for url in &urls {
            redis::Client::open(url.expose_secret())?;
        }
        anyhow::ensure!(!urls.is_empty(), "no Redis URL given");
        Ok(Self { urls })
    }

    /// A client for the first URL: the one server, or a seed of the cluster.
    pub(super) fn first_client(&self) -> redis::Client {
        redis::Client::open(self.urls[0].expose_secret())
            .expect("every URL was parsed by `Target::parse`")
    }

    /// Tells a single server from a cluster: a list of seeds is a cluster; one server says.
    ///
    /// # Errors
    /// When Redis cannot be reached.
    pub(super) async fn probe(&self) -> Result<Mode, BrokerError> {
        if self.urls.len() > 1 {
            return Ok(Mode::Cluster);
        }
        let info: String = tokio::time::timeout(COMMAND_TIMEOUT, async {
            let mut connection = self
                .first_client()
                .get_multiplexed_async_connection()
                .await?;
            redis::cmd("INFO")
                .arg("cluster")
                .query_async::<String>(&mut connection)
                .await
        })
        .await
        .map_err(|_| BrokerError::Timeout(COMMAND_TIMEOUT))??;
        Ok(if info.contains("cluster_enabled:1") {
            Mode::Cluster
        } else {
            Mode::Single
        })
    }

    /// The command connection for `mode`. On a cluster it also receives the sharded
    /// subscriptions' pushes, sent to `pushes`.
    ///
    /// # Errors
    /// When Redis cannot be reached (a cluster must answer to be mapped).
    pub(super) async fn connect(
        &self,
        mode: Mode,
        pushes: impl AsyncPushSender,
    ) -> Result<Commands, BrokerError> {
        match mode {
            Mode::Single => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(COMMAND_TIMEOUT))
                    .set_response_timeout(Some(COMMAND_TIMEOUT))
                    .set_number_of_retries(2)
                    .set_min_delay(Duration::from_millis(100))
                    .set_max_delay(MAX_BACKOFF);
                Ok(Commands::Single(ConnectionManager::new_lazy_with_config(
                    self.first_client(),
                    config,
                )?))
            }
            Mode::Cluster => {
                let seeds: Vec<&str> = self.urls.iter().map(ExposeSecret::expose_secret).collect();
                let client = ClusterClientBuilder::new(seeds)
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .push_sender(pushes)
                    .connection_timeout(COMMAND_TIMEOUT)
                    .response_timeout(COMMAND_TIMEOUT)
                    .retries(3)
                    .min_retry_wait(50)
                    .max_retry_wait(1_000)
                    .build()?;
                let connection =
                    tokio::time::timeout(COMMAND_TIMEOUT * 2, client.get_async_connection())
                        .await
                        .map_err(|_| BrokerError::Timeout(COMMAND_TIMEOUT * 2))??;
                Ok(Commands::Cluster(connection))
            }
        }
    }
}

/// The node's command connection: multiplexed, cheap to clone, shared by every task.
#[derive(Clone)]
pub(super) enum Commands {
    /// One server.
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}
