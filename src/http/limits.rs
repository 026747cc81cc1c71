//! What stands between a spike and Redis: rate limits (governor) per
//! customer, per client address and per gateway, and a bound on reserves in
//! flight. Over a limit the answer is an honest, immediate 429 or 503 with
//! `Retry-After`, never a queue that turns into timeouts.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::LimitSettings;

pub struct Limits {
    per_customer: Option<DefaultKeyedRateLimiter<String>>,
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    public_per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    global: Option<DefaultDirectRateLimiter>,
    in_flight: Arc<Semaphore>,
    trusted_proxies: Vec<IpAddr>,
    client_ip_header: HeaderName,
    clock: DefaultClock,
}

/// Why a request was turned away before reaching Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// A rate limit: retry after this long.
    RateLimited(Duration),
    /// Too many reserves in flight on this gateway.
    Overloaded,
}

fn quota(per_second: u32, burst: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(per_second)?;
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Some(Quota::per_second(rate).allow_burst(burst))
}

impl Limits {
    /// Built once at start-up; `enabled = false` leaves only the in-flight
    /// bound.
    pub fn new(s: &LimitSettings) -> Result<Limits, String> {
        let on = |q: Option<Quota>| if s.enabled { q } else { None };
        let trusted_proxies = s
            .trusted_proxies
            .iter()
            .map(|p| {
                p.parse()
                    .map_err(|_| format!("`limits.trusted_proxies`: `{p}` is not an IP address"))
            })
            .collect::<Result<_, _>>()?;
        let client_ip_header = HeaderName::try_from(s.client_ip_header.as_str())
            .map_err(|_| "`limits.client_ip_header` is not a header name".to_string())?;
        Ok(Limits {
            per_customer: on(quota(s.per_customer_per_second, s.per_customer_burst))
                .map(DefaultKeyedRateLimiter::keyed),
            per_ip: on(quota(s.per_ip_per_second, s.per_ip_burst))
                .map(DefaultKeyedRateLimiter::keyed),
            public_per_ip: on(quota(s.public_per_ip_per_second, s.public_per_ip_burst))
                .map(DefaultKeyedRateLimiter::keyed),
            global: on(quota(s.global_per_second, s.global_per_second))
                .map(DefaultDirectRateLimiter::direct),
            in_flight: Arc::new(Semaphore::new(s.max_in_flight)),
            trusted_proxies,
            client_ip_header,
            clock: DefaultClock::default(),
        })
    }

    /// The client's address: the peer, unless the peer is a trusted proxy,
    /// in which case the right-most address in the configured header that is
    /// not itself a trusted proxy (what the proxy saw). Anything unparsable
    /// falls back to the peer, so a client cannot pick its own bucket.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusted_proxies.contains(&peer) {
            return peer;
        }
        headers
            .get_all(&self.client_ip_header)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse::<IpAddr>().ok())
            .rev()
            .find(|ip| !self.trusted_proxies.contains(ip))
            .unwrap_or(peer)
    }

    /// The per-customer and per-address limits of the reservation endpoints.
    pub fn check(&self, customer: &str, ip: IpAddr) -> Result<(), Shed> {
        if let Some(l) = &self.per_customer {
            // governor looks keys up by `&K`: one small copy of the id.
            l.check_key(&customer.to_string())
                .map_err(|n| self.wait(n))?;
        }
        if let Some(l) = &self.per_ip {
            l.check_key(&ip).map_err(|n| self.wait(n))?;
        }
        Ok(())
    }

    /// The per-address limit of the public reads (sales, a sale, the
    /// stream): they need no account, so the address is all there is.
    pub fn check_public(&self, ip: IpAddr) -> Result<(), Shed> {
        if let Some(l) = &self.public_per_ip {
            l.check_key(&ip).map_err(|n| self.wait(n))?;
        }
        Ok(())
    }

    /// The gateway's reserve budget and the in-flight bound; hold the permit
    /// until the engine has answered.
    pub fn enter_reserve(&self) -> Result<OwnedSemaphorePermit, Shed> {
        if let Some(g) = &self.global {
            g.check().map_err(|n| self.wait(n))?;
        }
        self.in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| Shed::Overloaded)
    }

    fn wait(&self, n: governor::NotUntil<<DefaultClock as Clock>::Instant>) -> Shed {
        Shed::RateLimited(n.wait_time_from(self.clock.now()))
    }

    /// Forgets keys whose buckets are full again, so memory stays bounded
    /// however many distinct customers and addresses come by.
    pub fn sweep(&self) {
        if let Some(l) = &self.per_customer {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.per_ip {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.public_per_ip {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// Keys currently tracked by the keyed limiters.
    #[cfg(test)]
    fn tracked_keys(&self) -> usize {
        self.per_customer.as_ref().map_or(0, |l| l.len())
            + self.per_ip.as_ref().map_or(0, |l| l.len())
            + self.public_per_ip.as_ref().map_or(0, |l| l.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> LimitSettings {
        LimitSettings {
            enabled: true,
            per_customer_per_second: 1,
            per_customer_burst: 2,
            per_ip_per_second: 100,
            per_ip_burst: 100,
            public_per_ip_per_second: 1,
            public_per_ip_burst: 3,
            global_per_second: 0,
            max_in_flight: 1,
            trusted_proxies: vec!["10.0.0.1".into()],
            client_ip_header: "x-forwarded-for".into(),
        }
    }

    #[test]
    fn a_customer_gets_the_burst_then_waits() {
        let l = Limits::new(&settings()).unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(l.check("c1", ip).is_ok());
        assert!(l.check("c1", ip).is_ok());
        match l.check("c1", ip) {
            Err(Shed::RateLimited(d)) => assert!(d > Duration::ZERO && d <= Duration::from_secs(1)),
            other => panic!("{other:?}"),
        }
        assert!(
            l.check("c2", ip).is_ok(),
            "another customer is still served"
        );
    }

    #[test]
    fn public_reads_have_their_own_budget_per_address() {
        let l = Limits::new(&settings()).unwrap();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(l.check_public(a).is_ok());
        }
        assert!(matches!(l.check_public(a), Err(Shed::RateLimited(_))));
        assert!(l.check_public(b).is_ok(), "another address is still served");
        assert!(l.check("c1", a).is_ok(), "reserves keep their own budget");
    }

    #[test]
    fn forwarded_addresses_count_only_behind_a_trusted_proxy() {
        let l = Limits::new(&settings()).unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "1.2.3.4, 5.6.7.8".parse().unwrap());
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let stranger: IpAddr = "9.9.9.9".parse().unwrap();
        assert_eq!(l.client_ip(proxy, &h), "5.6.7.8".parse::<IpAddr>().unwrap());
        assert_eq!(l.client_ip(stranger, &h), stranger);
    }

    #[test]
    fn idle_keys_are_forgotten() {
        let mut s = settings();
        s.per_customer_per_second = 1000;
        s.per_customer_burst = 1;
        s.per_ip_per_second = 1_000_000;
        s.per_ip_burst = 1_000_000;
        let l = Limits::new(&s).unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for i in 0..10_000 {
            assert!(l.check(&format!("c{i}"), ip).is_ok());
        }
        assert!(l.tracked_keys() >= 10_000);
        std::thread::sleep(Duration::from_millis(20));
        l.sweep();
        // The per-address bucket of the one address may stay; no customer does.
        assert!(l.tracked_keys() <= 1, "{} keys kept", l.tracked_keys());
    }

    #[test]
    fn in_flight_is_bounded_and_disabled_limits_let_everything_through() {
        let mut s = settings();
        s.enabled = false;
        let l = Limits::new(&s).unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..100 {
            assert!(l.check("c1", ip).is_ok());
        }
        let permit = l.enter_reserve().unwrap();
        assert_eq!(l.enter_reserve().unwrap_err(), Shed::Overloaded);
        drop(permit);
        assert!(l.enter_reserve().is_ok());
    }
}
