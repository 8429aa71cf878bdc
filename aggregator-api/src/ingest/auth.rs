//! Ingest authentication by TokenReview: the agent presents its projected
//! ServiceAccount token, minted for the aggregator's audience; kube-apiserver
//! says whose it is and, for node-bound tokens, which node it is bound to.
//! Another replica of the aggregator presents its own ServiceAccount's.
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tonic::{Status, metadata::MetadataMap};

use super::{Caller, IngestAuth};
use crate::auth::{
    cache::TtlCache,
    review::{TokenReviewer, TokenVerdict},
};

/// The `extra` key kube-apiserver sets for tokens bound to a Node (and for
/// pod-bound tokens, to the pod's node).
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// The bearer token of a gRPC call, or `unauthenticated`.
pub fn bearer_token(metadata: &MetadataMap) -> Result<&str, Status> {
    metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Status::unauthenticated("a bearer token is required"))
}

/// Accepts the agents' ServiceAccount, binding each stream to the node its
/// token names, and with [`TokenReviewAuth::with_replicas`] the aggregator's
/// own, as a replica.
pub struct TokenReviewAuth {
    reviewer: Arc<dyn TokenReviewer>,
    /// `system:serviceaccount:<namespace>:<name>`.
    agent_user: String,
    /// The aggregator's own, for its replicas' streams.
    replica_user: Option<String>,
    /// Refuse tokens that are not bound to a node (they could report any node).
    require_node: bool,
    cache: Mutex<TtlCache<String, Result<Caller, String>>>,
    ttl: Duration,
}

impl TokenReviewAuth {
    pub fn new(reviewer: Arc<dyn TokenReviewer>, namespace: &str, service_account: &str) -> Self {
        Self {
            reviewer,
            agent_user: format!("system:serviceaccount:{namespace}:{service_account}"),
            replica_user: None,
            require_node: true,
            cache: Mutex::new(TtlCache::new(16_384)),
            ttl: Duration::from_secs(10),
        }
    }

    /// Also accept tokens that name no node (such a stream may report any node).
    pub fn allow_unbound(mut self) -> Self {
        self.require_node = false;
        self
    }

    /// Also accept the aggregator's ServiceAccount, as another replica.
    pub fn with_replicas(mut self, namespace: &str, service_account: &str) -> Self {
        self.replica_user = Some(format!(
            "system:serviceaccount:{namespace}:{service_account}"
        ));
        self
    }

    fn decide(&self, verdict: TokenVerdict) -> Result<Caller, String> {
        let user = match verdict {
            TokenVerdict::Authenticated(user) => user,
            TokenVerdict::Rejected(why) => {
                return Err(if why.is_empty() {
                    "token rejected by kube-apiserver".into()
                } else {
                    format!("token rejected: {why}")
                });
            }
        };
        if self.replica_user.as_ref() == Some(&user.name) {
            return Ok(Caller {
                user: user.name,
                node: None,
                replica: true,
            });
        }
        if user.name != self.agent_user {
            return Err(format!(
                "{} may not report metrics (only {})",
                user.name, self.agent_user
            ));
        }
        let node = user
            .extra
            .get(NODE_NAME_EXTRA)
            .and_then(|v| v.first())
            .cloned();
        if node.is_none() && self.require_node {
            return Err("token is not bound to a node; mint it with a Node or Pod binding".into());
        }
        Ok(Caller {
            user: user.name,
            node,
            replica: false,
        })
    }
}

#[tonic::async_trait]
impl IngestAuth for TokenReviewAuth {
    async fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        let token = bearer_token(metadata)?;
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&token.to_string(), Instant::now());
        let decision = match cached {
            Some(d) => d,
            None => {
                let verdict = self.reviewer.review(token).await.map_err(|e| {
                    Status::unavailable(format!("cannot review the token now: {e}"))
                })?;
                let decision = self.decide(verdict);
                self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(
                    token.to_string(),
                    decision.clone(),
                    self.ttl,
                    Instant::now(),
                );
                decision
            }
        };
        decision.map_err(|why| match why.starts_with("token") {
            true => Status::unauthenticated(why),
            false => Status::permission_denied(why),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::future::BoxFuture;

    use super::*;
    use crate::auth::{User, review::ReviewError};

    struct Fake {
        calls: AtomicUsize,
    }

    impl TokenReviewer for Fake {
        fn review<'a>(
            &'a self,
            token: &'a str,
        ) -> BoxFuture<'a, Result<TokenVerdict, ReviewError>> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let verdict = match token {
                "agent-node-1" => user("kube-system:nodepulse-agent", Some("node-1")),
                "agent-unbound" => user("kube-system:nodepulse-agent", None),
                "aggregator" => user("kube-system:nodepulse", None),
                "someone-else" => user("default:default", Some("node-1")),
                _ => TokenVerdict::Rejected("invalid bearer token".into()),
            };
            Box::pin(async move { Ok(verdict) })
        }
    }

    /// ServiceAccount `account` (namespace:name), its token bound to a Pod
    /// on `node` when there is one.
    fn user(account: &str, node: Option<&str>) -> TokenVerdict {
        TokenVerdict::Authenticated(User {
            name: format!("system:serviceaccount:{account}"),
            uid: String::new(),
            groups: vec![],
            extra: node
                .map(|n| (NODE_NAME_EXTRA.to_string(), vec![n.to_string()]))
                .into_iter()
                .collect(),
        })
    }

    fn md(token: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ascii"),
        );
        m
    }

    #[tokio::test]
    async fn only_the_agent_account_bound_to_a_node() {
        let fake = Arc::new(Fake {
            calls: AtomicUsize::new(0),
        });
        let auth = TokenReviewAuth::new(fake.clone(), "kube-system", "nodepulse-agent");
        let caller = auth
            .authenticate(&md("agent-node-1"))
            .await
            .expect("accepted");
        assert_eq!(caller.node.as_deref(), Some("node-1"));
        assert_eq!(
            auth.authenticate(&md("someone-else"))
                .await
                .expect_err("other SA")
                .code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            auth.authenticate(&md("forged"))
                .await
                .expect_err("bad token")
                .code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            auth.authenticate(&MetadataMap::new())
                .await
                .expect_err("no token")
                .code(),
            tonic::Code::Unauthenticated
        );
        let unbound = auth
            .authenticate(&md("agent-unbound"))
            .await
            .expect_err("unbound");
        assert!(
            unbound.message().contains("not bound to a node"),
            "{unbound:?}"
        );
        // Cached: a second look does not ask kube-apiserver again.
        let before = fake.calls.load(Ordering::Relaxed);
        auth.authenticate(&md("agent-node-1"))
            .await
            .expect("accepted");
        auth.authenticate(&md("forged"))
            .await
            .expect_err("still bad");
        assert_eq!(fake.calls.load(Ordering::Relaxed), before);

        assert_eq!(
            auth.authenticate(&md("aggregator"))
                .await
                .expect_err("replicas not taken")
                .code(),
            tonic::Code::PermissionDenied
        );
        let replicas = TokenReviewAuth::new(fake.clone(), "kube-system", "nodepulse-agent")
            .with_replicas("kube-system", "nodepulse");
        let replica = replicas
            .authenticate(&md("aggregator"))
            .await
            .expect("a replica");
        assert!(replica.replica && replica.node.is_none(), "{replica:?}");
        assert!(
            !replicas
                .authenticate(&md("agent-node-1"))
                .await
                .expect("agent")
                .replica
        );

        let lenient = TokenReviewAuth::new(fake, "kube-system", "nodepulse-agent").allow_unbound();
        assert_eq!(
            lenient
                .authenticate(&md("agent-unbound"))
                .await
                .expect("ok")
                .node,
            None
        );
    }
}
