//! Which replica owns a blob: rendezvous (highest-random-weight) hashing of
//! the digest over the live replicas.
//!
//! Every replica scores every member for a digest and picks the highest, so
//! replicas that see the same member list agree on the owner without talking
//! to each other, and a member joining or leaving moves only the digests it
//! wins or held (about 1/N of them), not a reshuffle of all. The score is
//! SHA-256 over the member's name and the digest: a specified hash, so
//! replicas running different lasti builds during a rolling update still
//! agree (Rust's `DefaultHasher` promises no stability across releases).

use sha2::{Digest as _, Sha256};

use crate::oci::Digest;

/// A member's score for a digest; the highest wins.
pub fn score(member: &str, digest: &Digest) -> u64 {
    let mut hash = Sha256::new();
    hash.update(member.as_bytes());
    // A separator no member name contains, so ("ab", "c…") ≠ ("a", "bc…").
    hash.update([0u8]);
    hash.update(digest.as_str().as_bytes());
    let out = hash.finalize();
    u64::from_be_bytes(out[..8].try_into().expect("SHA-256 is 32 bytes"))
}

/// The owner of `digest` among `members`, or `None` when there are none.
/// Ties (astronomically unlikely) go to the name that sorts first, so the
/// choice never depends on the list's order.
pub fn owner<'a, S: AsRef<str>>(members: &'a [S], digest: &Digest) -> Option<&'a str> {
    members.iter().map(AsRef::as_ref).max_by(|a, b| {
        score(a, digest)
            .cmp(&score(b, digest))
            .then_with(|| b.cmp(a))
    })
}

/// The members in the order to ask for `digest`: the owner first, then the
/// one that would own it if the owner were gone, and so on. An asker whose
/// owner is unreachable tries the next before fetching by itself.
pub fn ranked<'a, S: AsRef<str>>(members: &'a [S], digest: &Digest) -> Vec<&'a str> {
    let mut ranked: Vec<(u64, &str)> = members
        .iter()
        .map(|m| (score(m.as_ref(), digest), m.as_ref()))
        .collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    ranked.into_iter().map(|(_, m)| m).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn digest(i: u64) -> Digest {
        Digest::sha256_of(&i.to_be_bytes())
    }

    fn members(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("lasti-{i}.lasti-peers:5000"))
            .collect()
    }

    #[test]
    fn no_members_no_owner() {
        assert_eq!(owner::<String>(&[], &digest(1)), None);
        assert!(ranked::<String>(&[], &digest(1)).is_empty());
    }

    #[test]
    fn the_owner_is_the_same_whatever_the_order_of_the_list() {
        let mut list = members(5);
        for i in 0..200 {
            let d = digest(i);
            let first = owner(&list, &d).unwrap().to_string();
            list.reverse();
            assert_eq!(owner(&list, &d).unwrap(), first);
            list.rotate_left(2);
            assert_eq!(owner(&list, &d).unwrap(), first);
            assert_eq!(
                ranked(&list, &d)[0],
                first,
                "the ranking starts at the owner"
            );
        }
    }

    #[test]
    fn digests_spread_evenly_over_the_members() {
        let list = members(3);
        let mut counts = [0usize; 3];
        let n = 30_000;
        for i in 0..n {
            let o = owner(&list, &digest(i)).unwrap();
            counts[list.iter().position(|m| m == o).unwrap()] += 1;
        }
        for c in counts {
            // Each member gets a third, within 3% of all digests.
            assert!((c as f64 / n as f64 - 1.0 / 3.0).abs() < 0.03, "{counts:?}");
        }
    }

    #[test]
    fn a_joining_member_takes_about_one_in_n_and_moves_nothing_else() {
        let before = members(3);
        let after = members(4);
        let n = 20_000;
        let mut moved = 0;
        for i in 0..n {
            let d = digest(i);
            let (old, new) = (owner(&before, &d).unwrap(), owner(&after, &d).unwrap());
            if old != new {
                assert_eq!(new, after[3], "a digest moves only to the new member");
                moved += 1;
            }
        }
        let share = moved as f64 / n as f64;
        assert!((share - 0.25).abs() < 0.03, "moved {share}");
    }

    proptest! {
        #[test]
        fn a_leaving_member_moves_only_its_own_digests(
            n in 2usize..8, leaving in 0usize..8, seed in any::<u64>(),
        ) {
            let leaving = leaving % n;
            let all = members(n);
            let mut rest = all.clone();
            let gone = rest.remove(leaving);
            for i in 0..200u64 {
                let d = digest(seed.wrapping_add(i));
                let before = owner(&all, &d).unwrap();
                let after = owner(&rest, &d).unwrap();
                if before != gone {
                    prop_assert_eq!(before, after);
                } else {
                    // The digest goes to the one ranked second before.
                    prop_assert_eq!(after, ranked(&all, &d)[1]);
                }
            }
        }
    }
}
