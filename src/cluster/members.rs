//! Who the replicas are, as this one sees them: a static list, or the
//! addresses of a headless Service looked up every few seconds; this
//! replica is always a member. A member that just failed a request is left
//! out for a while, so its digests go to the next in rank (or home) instead
//! of every miss waiting for the same dead address.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use super::rendezvous;
use crate::config::member_name;
use crate::oci::Digest;

/// How long a member that failed a request is left out.
pub const DOWN_FOR: Duration = Duration::from_secs(5);

/// The replicas, as this one sees them.
#[derive(Debug)]
pub struct Members {
    me: String,
    list: RwLock<Arc<[String]>>,
    down: Mutex<HashMap<String, Instant>>,
    /// Other names the list gives this replica (found when it reached
    /// itself under one): digests they own are this replica's.
    aliases: RwLock<Vec<String>>,
}

impl Members {
    /// `me` and the others (`me` may be among them or not).
    pub fn new(me: &str, others: &[String]) -> Members {
        let members = Members {
            me: member_name(me),
            list: RwLock::new(Arc::from(Vec::new())),
            down: Mutex::new(HashMap::new()),
            aliases: RwLock::new(Vec::new()),
        };
        members.set(others.iter().map(String::as_str));
        members
    }

    /// This replica's name.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// Replaces the member list (`me` is always kept).
    pub fn set<'a>(&self, others: impl Iterator<Item = &'a str>) {
        let mut list: Vec<String> = others.map(member_name).collect();
        list.push(self.me.clone());
        list.sort();
        list.dedup();
        *self.list.write().expect("members lock") = Arc::from(list);
    }

    /// Every member, this one included, sorted.
    pub fn all(&self) -> Arc<[String]> {
        Arc::clone(&self.list.read().expect("members lock"))
    }

    /// The member to fetch `digest` from, or `None` when this replica owns
    /// it: the highest-ranked member that has not just failed.
    pub fn owner(&self, digest: &Digest) -> Option<String> {
        self.owners(digest, 1).pop()
    }

    /// The owner of `digest` and up to `n - 1` members after it in rank,
    /// those that have not just failed, up to this replica (empty when it
    /// owns the digest). Every replica ranks alike, so askers whose owner
    /// went away all turn to the same next one.
    pub fn owners(&self, digest: &Digest, n: usize) -> Vec<String> {
        self.ranked_up(digest)
            .into_iter()
            .take_while(|(_, mine)| !mine)
            .take(n)
            .map(|(member, _)| member)
            .collect()
    }

    /// The member after this replica in rank for `digest` that has not
    /// just failed, when this replica owns it: the one that owned the
    /// digest while this replica was away (or before it joined), and may
    /// hold the blob already.
    pub fn successor(&self, digest: &Digest) -> Option<String> {
        let mut ranked = self.ranked_up(digest).into_iter();
        match ranked.next() {
            Some((_, true)) => ranked.find(|(_, mine)| !mine).map(|(member, _)| member),
            _ => None,
        }
    }

    /// The members in rank for `digest`, less those that just failed, each
    /// with whether it is this replica (by its name or an alias).
    fn ranked_up(&self, digest: &Digest) -> Vec<(String, bool)> {
        let list = self.all();
        let now = Instant::now();
        let mut down = self.down.lock().expect("down lock");
        down.retain(|_, since| now.duration_since(*since) < DOWN_FOR);
        let aliases = self.aliases.read().expect("aliases lock");
        let mine = |m: &str| m == self.me || aliases.iter().any(|a| a == m);
        rendezvous::ranked(&list, digest)
            .into_iter()
            .map(|m| (m.to_string(), mine(m)))
            .filter(|(m, mine)| *mine || !down.contains_key(m))
            .collect()
    }

    /// Takes `member` as another name of this replica from now on.
    pub fn is_me(&self, member: &str) {
        let mut aliases = self.aliases.write().expect("aliases lock");
        if member != self.me && !aliases.iter().any(|a| a == member) {
            aliases.push(member.to_string());
        }
    }

    /// Takes `member` back at once: it was heard from (a request of its
    /// own, or its greeting after a restart), so its digests go home
    /// again instead of to the next in rank until [`DOWN_FOR`] is over.
    pub fn heard_from(&self, member: &str) {
        let member = member_name(member);
        self.down.lock().expect("down lock").remove(&member);
    }

    /// The members left out now, each with how long ago it failed.
    pub fn left_out(&self) -> Vec<(String, Duration)> {
        let now = Instant::now();
        let down = self.down.lock().expect("down lock");
        down.iter()
            .map(|(member, since)| (member.clone(), now.duration_since(*since)))
            .filter(|(_, ago)| *ago < DOWN_FOR)
            .collect()
    }

    /// Leaves `member` out for [`DOWN_FOR`].
    pub fn failed(&self, member: &str) {
        if member != self.me {
            let mut down = self.down.lock().expect("down lock");
            down.insert(member.to_string(), Instant::now());
        }
    }
}

/// Looks `name` (`host:port`) up every `every` and sets the members to its
/// addresses, until `members` is dropped. A failed lookup keeps the last
/// list: DNS trouble must not split the cluster into singletons.
pub async fn follow_dns(members: Weak<Members>, name: String, every: Duration) {
    let mut logged_failure = false;
    loop {
        let found = tokio::net::lookup_host(name.as_str()).await;
        let Some(members) = members.upgrade() else {
            return;
        };
        match found {
            Ok(addresses) => {
                let names: Vec<String> = addresses.map(|a| a.to_string()).collect();
                members.set(names.iter().map(String::as_str));
                logged_failure = false;
            }
            Err(error) if !logged_failure => {
                tracing::warn!(%name, %error, "cannot look the replicas up; keeping the last list");
                logged_failure = true;
            }
            Err(_) => {}
        }
        drop(members);
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digests() -> impl Iterator<Item = Digest> {
        (0u64..200).map(|i| Digest::sha256_of(&i.to_be_bytes()))
    }

    fn three(me: &str) -> Members {
        let others = ["10.0.0.1:5001", "10.0.0.2:5001", "10.0.0.3:5001"].map(String::from);
        Members::new(me, &others)
    }

    #[test]
    fn every_replica_agrees_on_the_owner() {
        let views = ["10.0.0.1:5001", "10.0.0.2:5001", "10.0.0.3:5001"].map(three);
        for digest in digests() {
            let named: Vec<String> = views
                .iter()
                .map(|v| v.owner(&digest).unwrap_or_else(|| v.me().to_string()))
                .collect();
            assert!(named.windows(2).all(|w| w[0] == w[1]), "{named:?}");
            assert_eq!(
                views.iter().filter(|v| v.owner(&digest).is_none()).count(),
                1
            );
        }
    }

    #[test]
    fn this_replica_is_always_a_member() {
        let members = Members::new("10.0.0.9:5001", &["10.0.0.1:5001".to_string()]);
        assert_eq!(members.all().len(), 2);
        members.set(std::iter::empty());
        assert_eq!(&*members.all(), ["10.0.0.9:5001".to_string()]);
        assert!(digests().all(|d| members.owner(&d).is_none()));
    }

    #[test]
    fn a_failed_member_hands_its_digests_to_the_next_in_rank() {
        let members = three("10.0.0.1:5001");
        let theirs: Vec<Digest> = digests()
            .filter(|d| members.owner(d).as_deref() == Some("10.0.0.2:5001"))
            .collect();
        assert!(!theirs.is_empty());
        members.failed("10.0.0.2:5001");
        for digest in &theirs {
            let ranked = rendezvous::ranked(&members.all(), digest)
                .into_iter()
                .map(str::to_string)
                .collect::<Vec<_>>();
            let next = members.owner(digest);
            assert_ne!(next.as_deref(), Some("10.0.0.2:5001"));
            let expected = (ranked[1] != "10.0.0.1:5001").then(|| ranked[1].clone());
            assert_eq!(next, expected);
        }
        members.failed("10.0.0.1:5001");
        assert!(
            digests().all(|d| members.owner(&d).as_deref() != Some("10.0.0.1:5001")),
            "this replica is never left out of its own view"
        );
    }

    #[test]
    fn the_owners_of_a_digest_run_in_rank_up_to_this_replica() {
        let members = three("b:1");
        for digest in digests() {
            let all = members.all();
            let ranked = rendezvous::ranked(&all, &digest);
            let before_me: Vec<String> = ranked
                .iter()
                .take_while(|m| **m != members.me())
                .map(|m| m.to_string())
                .collect();
            assert_eq!(members.owners(&digest, 4), before_me);
            assert_eq!(members.owners(&digest, 1).first(), before_me.first());
            if before_me.len() >= 2 {
                members.failed(&before_me[0]);
                assert_eq!(members.owners(&digest, 4), before_me[1..]);
                members.down.lock().unwrap().clear();
            }
        }
    }

    #[test]
    fn an_owner_s_successor_is_the_next_in_rank_that_is_up() {
        let members = three("b:1");
        for digest in digests() {
            let all = members.all();
            let ranked = rendezvous::ranked(&all, &digest);
            let owns = ranked[0] == members.me();
            match owns {
                false => assert_eq!(members.successor(&digest), None),
                true => {
                    assert_eq!(members.successor(&digest).as_deref(), Some(ranked[1]));
                    members.failed(ranked[1]);
                    assert_eq!(members.successor(&digest).as_deref(), Some(ranked[2]));
                    members.down.lock().unwrap().clear();
                }
            }
        }
    }

    #[test]
    fn a_member_heard_from_is_taken_back_at_once() {
        let members = three("10.0.0.9:5001");
        members.failed("10.0.0.1:5001");
        let away: Vec<Digest> = digests()
            .filter(|d| rendezvous::ranked(&members.all(), d)[0] == "10.0.0.1:5001")
            .collect();
        assert!(!away.is_empty());
        for digest in &away {
            assert_ne!(members.owner(digest).as_deref(), Some("10.0.0.1:5001"));
        }
        members.heard_from("10.0.0.1:5001");
        for digest in &away {
            assert_eq!(members.owner(digest).as_deref(), Some("10.0.0.1:5001"));
        }
    }

    #[test]
    fn a_member_found_to_be_this_replica_owns_nothing_for_others() {
        let members = Members::new(
            "127.0.0.1:5001",
            &["127.0.0.1:5001".to_string(), "localhost:5001".to_string()],
        );
        let alias = digests()
            .find(|d| members.owner(d).as_deref() == Some("localhost:5001"))
            .expect("the alias owns some digests");
        members.is_me("localhost:5001");
        assert_eq!(
            members.owner(&alias),
            None,
            "its digests are this replica's"
        );
        assert!(digests().all(|d| members.owner(&d).is_none()));
    }

    #[test]
    fn names_are_compared_in_one_spelling() {
        let members = Members::new("[FD00::1]:5001", &["[fd00:0::1]:5001".to_string()]);
        assert_eq!(members.all().len(), 1);
    }
}
