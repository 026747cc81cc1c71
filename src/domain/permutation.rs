//! `feistel-sha256-v1`: the keyed permutation that places a waiting room's
//! members. Published so that anyone can recompute every position from the
//! seed, the member count and a ticket (docs/running-a-sale.md, "Check your
//! place in a waiting room").
//!
//! For `members = n` and ticket `i < n`:
//! - `n = 1`: the position is 0.
//! - `h` is the smallest whole number ≥ 1 with `4^h ≥ n`; a value `x < 4^h`
//!   is split into `L = x >> h` and `R = x & (2^h − 1)`.
//! - One round `r` (0 to 7): `F = first 8 bytes, big-endian, of
//!   SHA-256("{seed}:{n}:{r}:{R}") & (2^h − 1)` (the numbers in decimal),
//!   then `(L, R) = (R, L xor F)`.
//! - Eight rounds give `x' = (L << h) | R`; while `x' ≥ n` the eight rounds
//!   run again on `x'` (cycle walking), so the result is below `n`.
//!
//! A Feistel network is a bijection of `0..4^h` whatever its round
//! function, and cycle walking keeps it one on `0..n`, so positions are
//! unique and gap-free. Its inverse (the rounds backwards) tells the worker
//! which ticket holds a position, so admitting in position order needs no
//! sort. `4^h < 4n`, so a walk takes fewer than four passes on average.

use sha2::{Digest, Sha256};

/// The name the public view of a room gives this function.
pub const NAME: &str = "feistel-sha256-v1";

const ROUNDS: u64 = 8;

/// The position of ticket `ticket` among `members` (`ticket < members`).
pub fn position(seed: &str, members: u64, ticket: u64) -> u64 {
    walk(seed, members, ticket, encrypt)
}

/// The ticket at `position` among `members`: the inverse of [`position`].
pub fn ticket_at(seed: &str, members: u64, position: u64) -> u64 {
    walk(seed, members, position, decrypt)
}

fn walk(seed: &str, n: u64, start: u64, step: fn(&Network, u64) -> u64) -> u64 {
    if n <= 1 || start >= n {
        return start;
    }
    let net = Network::new(seed, n);
    let mut x = step(&net, start);
    while x >= n {
        x = step(&net, x);
    }
    x
}

struct Network<'a> {
    seed: &'a str,
    n: u64,
    half: u32,
    mask: u64,
}

impl Network<'_> {
    fn new(seed: &str, n: u64) -> Network<'_> {
        let mut half = 1;
        while (1u128 << (2 * half)) < u128::from(n) {
            half += 1;
        }
        Network {
            seed,
            n,
            half,
            mask: (1u64 << half) - 1,
        }
    }

    fn f(&self, round: u64, r: u64) -> u64 {
        let digest = Sha256::digest(format!("{}:{}:{round}:{r}", self.seed, self.n));
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first) & self.mask
    }
}

fn encrypt(net: &Network, x: u64) -> u64 {
    let (mut l, mut r) = (x >> net.half, x & net.mask);
    for round in 0..ROUNDS {
        (l, r) = (r, l ^ net.f(round, r));
    }
    (l << net.half) | r
}

fn decrypt(net: &Network, x: u64) -> u64 {
    let (mut l, mut r) = (x >> net.half, x & net.mask);
    for round in (0..ROUNDS).rev() {
        (l, r) = (r ^ net.f(round, l), l);
    }
    (l << net.half) | r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bijection_with_its_inverse_for_every_size() {
        for n in [1u64, 2, 3, 4, 5, 7, 16, 17, 100, 1000, 4097] {
            let mut seen = vec![false; n as usize];
            for i in 0..n {
                let p = position("seed", n, i);
                assert!(p < n, "n={n} i={i} p={p}");
                assert!(!seen[p as usize], "n={n}: position {p} twice");
                seen[p as usize] = true;
                assert_eq!(ticket_at("seed", n, p), i, "n={n}");
            }
        }
    }

    #[test]
    fn the_seed_decides_the_order() {
        let a: Vec<u64> = (0..50).map(|i| position("a", 50, i)).collect();
        let b: Vec<u64> = (0..50).map(|i| position("b", 50, i)).collect();
        assert_ne!(a, b);
        assert_ne!(a, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn tickets_after_the_members_keep_their_place() {
        assert_eq!(position("s", 10, 12), 12);
        assert_eq!(ticket_at("s", 10, 12), 12);
    }

    /// A fixed value: the documented function must not change under a
    /// buyer's feet (a change is a new name, never a new meaning).
    #[test]
    fn the_published_function_is_stable() {
        let got: Vec<u64> = (0..8).map(|i| position("12.12", 8, i)).collect();
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..8).collect::<Vec<_>>());
        assert_eq!(got, STABLE.to_vec(), "feistel-sha256-v1 changed");
    }

    const STABLE: [u64; 8] = [6, 0, 2, 3, 5, 7, 1, 4];
}
