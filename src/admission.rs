//! Who may open a WebSocket: the Origin allow-list against cross-site WebSocket hijacking, and
//! the per-address connection count, so one address cannot take every viewer slot.
//!
//! The WebSocket route in `api` checks [`OriginPolicy::allows`] and asks the [`Admissions`] actor
//! for a [`Ticket`] before it upgrades; the viewer actor holds the ticket for the connection's
//! life, and dropping it gives the slot back. Counting lives in one actor, so no lock is shared.

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;

use actix::prelude::*;

/// Which pages may open the hub's WebSockets, by their `Origin` header. Clients that send no
/// Origin (anything but a browser) are not affected: the header is how a browser says which
/// site's script opened the socket.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OriginPolicy {
    /// `*`: every origin.
    any: bool,
    /// Origins allowed besides the hub's own and loopback, e.g. `https://watch.example.com`.
    extra: Vec<String>,
}

/// An `--allowed-origins` item that is not an origin.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BadOrigin {
    #[error("origin {0:?} must be scheme://host[:port], with no path")]
    Path(String),
    #[error("origin {0:?} must start with http:// or https:// (or be *)")]
    Scheme(String),
}

impl FromStr for OriginPolicy {
    type Err = BadOrigin;

    /// A comma-separated list of origins (`scheme://host[:port]`), or `*`; empty: none extra.
    fn from_str(s: &str) -> Result<Self, BadOrigin> {
        let mut policy = Self::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            if item == "*" {
                policy.any = true;
            } else if let Some(rest) = item
                .strip_prefix("http://")
                .or_else(|| item.strip_prefix("https://"))
            {
                if rest.is_empty() || rest.contains('/') {
                    return Err(BadOrigin::Path(item.to_owned()));
                }
                policy.extra.push(item.to_ascii_lowercase());
            } else {
                return Err(BadOrigin::Scheme(item.to_owned()));
            }
        }
        Ok(policy)
    }
}

impl OriginPolicy {
    /// True if a page from `origin` may connect to a hub reached as `host` (the request's Host
    /// header): its own origin, a loopback page, or one listed.
    pub fn allows(&self, origin: &str, host: Option<&str>) -> bool {
        if self.any {
            return true;
        }
        let origin = origin.trim().to_ascii_lowercase();
        let Some(authority) = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
        else {
            return false;
        };
        if host.is_some_and(|h| h.eq_ignore_ascii_case(authority)) {
            return true;
        }
        if is_loopback_authority(authority) {
            return true;
        }
        self.extra.contains(&origin)
    }
}

/// `localhost`, `127.x.x.x` or `[::1]`, with any port.
fn is_loopback_authority(authority: &str) -> bool {
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        authority.split(':').next().unwrap_or_default()
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Counts open WebSockets per client address.
pub struct Admissions {
    /// Most connections from one address; 0: no limit.
    max_per_ip: u32,
    open: HashMap<IpAddr, u32>,
}

impl Admissions {
    pub fn new(max_per_ip: u32) -> Self {
        Self {
            max_per_ip,
            open: HashMap::new(),
        }
    }
}

impl Actor for Admissions {
    type Context = Context<Self>;
}

/// Asks for a connection slot for `ip`.
#[derive(Message)]
#[rtype(result = "Result<Ticket, TooManyConnections>")]
pub struct Admit {
    pub ip: IpAddr,
}

/// The address already has its maximum of connections open.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{ip} already has {limit} connections open; close one first")]
pub struct TooManyConnections {
    pub ip: IpAddr,
    pub limit: u32,
}

/// A connection slot, given back when dropped.
pub struct Ticket {
    ip: IpAddr,
    admissions: Option<Addr<Admissions>>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(admissions) = self.admissions.take() {
            admissions.do_send(Release { ip: self.ip });
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Release {
    ip: IpAddr,
}

impl Handler<Admit> for Admissions {
    type Result = Result<Ticket, TooManyConnections>;
    fn handle(&mut self, msg: Admit, ctx: &mut Context<Self>) -> Self::Result {
        if self.max_per_ip == 0 {
            return Ok(Ticket {
                ip: msg.ip,
                admissions: None,
            });
        }
        let open = self.open.entry(msg.ip).or_default();
        if *open >= self.max_per_ip {
            return Err(TooManyConnections {
                ip: msg.ip,
                limit: self.max_per_ip,
            });
        }
        *open += 1;
        Ok(Ticket {
            ip: msg.ip,
            admissions: Some(ctx.address()),
        })
    }
}

impl Handler<Release> for Admissions {
    type Result = ();
    fn handle(&mut self, msg: Release, _: &mut Context<Self>) {
        if let Some(open) = self.open.get_mut(&msg.ip) {
            *open -= 1;
            if *open == 0 {
                self.open.remove(&msg.ip);
            }
        }
    }
}

/// How many addresses hold connections (for tests).
#[derive(Message)]
#[rtype(result = "usize")]
pub struct OpenAddresses;

impl Handler<OpenAddresses> for Admissions {
    type Result = usize;
    fn handle(&mut self, _: OpenAddresses, _: &mut Context<Self>) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hubs_own_origin_and_loopback_are_allowed_by_default() {
        let policy = OriginPolicy::default();
        let host = Some("replays.example.com");
        assert!(policy.allows("https://replays.example.com", host));
        assert!(policy.allows("http://REPLAYS.example.com", host));
        for local in [
            "http://localhost:3000",
            "http://127.0.0.1:8080",
            "http://[::1]:9",
        ] {
            assert!(policy.allows(local, host), "{local}");
        }
        for foreign in [
            "https://evil.example",
            "https://replays.example.com.evil.example",
            "null",
            "file://",
            "",
        ] {
            assert!(!policy.allows(foreign, host), "{foreign}");
        }
    }

    #[test]
    fn listed_origins_and_the_wildcard() {
        let policy: OriginPolicy = "https://watch.example.com, http://tv.local:8080"
            .parse()
            .unwrap();
        assert!(policy.allows("https://watch.example.com", Some("hub:8080")));
        assert!(policy.allows("http://tv.local:8080", Some("hub:8080")));
        assert!(!policy.allows("http://watch.example.com", Some("hub:8080")));
        let any: OriginPolicy = "*".parse().unwrap();
        assert!(any.allows("https://anything.example", None));
        assert!("watch.example.com".parse::<OriginPolicy>().is_err());
        assert!("https://a/b".parse::<OriginPolicy>().is_err());
        assert_eq!("".parse::<OriginPolicy>(), Ok(OriginPolicy::default()));
    }

    #[test]
    fn slots_per_address_are_counted_and_given_back() {
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        let other: IpAddr = "203.0.113.10".parse().unwrap();
        actix::System::new().block_on(async move {
            let admissions = Admissions::new(2).start();
            let a = admissions.send(Admit { ip }).await.unwrap().unwrap();
            let _b = admissions.send(Admit { ip }).await.unwrap().unwrap();
            let refused = admissions.send(Admit { ip }).await.unwrap();
            assert_eq!(refused.err().map(|e| e.limit), Some(2));
            assert!(admissions.send(Admit { ip: other }).await.unwrap().is_ok());
            drop(a);
            assert!(admissions.send(Admit { ip }).await.unwrap().is_ok());
            let unlimited = Admissions::new(0).start();
            for _ in 0..10 {
                std::mem::forget(unlimited.send(Admit { ip }).await.unwrap().unwrap());
            }
            assert_eq!(unlimited.send(OpenAddresses).await.unwrap(), 0);
        });
    }
}
