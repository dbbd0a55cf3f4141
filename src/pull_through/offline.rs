//! The offline switches at run time: the whole process's, or one
//! upstream's, set on one replica and forwarded to the others, so that a
//! cluster behind one Service goes offline (or back) as one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Proxy;
use crate::error::{Error, Result};
use crate::upstream::availability::State;

/// A switch to set: `upstream` (by name or alias) or, when `None`, the
/// whole process.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OfflineSwitch {
    /// On or off.
    pub offline: bool,
    /// The upstream; none for the whole process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
}

/// Whether requests go to the upstreams, and why not.
#[derive(Debug, Clone, Serialize)]
pub struct Availabilities {
    /// The whole process's switch.
    pub offline: bool,
    /// Each upstream's state, by name, and each other registry of its
    /// `urls` (`docker.io@mirror.gcr.io`).
    pub upstreams: BTreeMap<String, State>,
    /// What became of the switch on each other replica.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaSwitched>,
}

/// The switch forwarded to another replica.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaSwitched {
    /// The replica, as the member list names it.
    pub member: String,
    /// Why it could not be set there; none when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Proxy {
    /// The upstreams' availability now.
    pub fn availabilities(&self) -> Availabilities {
        let upstreams = self.upstreams.all().iter();
        Availabilities {
            offline: self.upstreams.is_offline(),
            upstreams: upstreams
                .flat_map(|u| std::iter::once(u).chain(u.mirrors()))
                .map(|u| (u.name().to_string(), u.availability()))
                .collect(),
            replicas: Vec::new(),
        }
    }

    /// Sets a switch here and, when an operator set it (not a peer), on
    /// every other replica.
    pub async fn switch_offline(
        &self,
        switch: &OfflineSwitch,
        forward: bool,
    ) -> Result<Availabilities> {
        match &switch.upstream {
            None => self.upstreams.set_offline(switch.offline),
            Some(name) => match self.upstreams.by_name(name) {
                Some(upstream) => upstream.set_offline(switch.offline),
                None => {
                    return Err(Error::NameInvalid(format!(
                        "no upstream is configured as {name:.64}"
                    )))
                }
            },
        }
        let mut now = self.availabilities();
        let Some(cluster) = self.cluster.as_ref().filter(|_| forward) else {
            return Ok(now);
        };
        let me = cluster.members().me().to_string();
        let members = cluster.members().all();
        let asks = members.iter().filter(|m| **m != me).map(|member| async move {
            let error = match cluster.client().switch_offline(member, switch).await {
                Ok(()) => None,
                Err(err) => {
                    tracing::warn!(member, error = %err, "offline switch: a replica did not take it");
                    Some(err.to_string())
                }
            };
            ReplicaSwitched {
                member: member.clone(),
                error,
            }
        });
        now.replicas = futures_util::future::join_all(asks).await;
        Ok(now)
    }
}
