//! The process's limit on open file descriptors (`RLIMIT_NOFILE`): every WebSocket is one, so
//! the hub (at start) and the load tool (before it connects its viewers) raise it to what they
//! need instead of failing after a few thousand connections.

use std::io;

/// Raises the soft limit on open descriptors to at least `wanted` where it can: up to the hard
/// limit always, and the hard limit too when the process may (root, or `CAP_SYS_RESOURCE`).
/// Returns the soft limit now in force, which is below `wanted` when neither was allowed.
pub fn raise(wanted: u64) -> io::Result<u64> {
    let mut limit = current()?;
    if limit.rlim_cur >= wanted {
        return Ok(limit.rlim_cur);
    }
    if limit.rlim_max < wanted {
        let higher = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: wanted,
        };
        if set(&higher).is_ok() {
            return Ok(wanted);
        }
    }
    limit.rlim_cur = wanted.min(limit.rlim_max);
    set(&limit)?;
    Ok(limit.rlim_cur)
}

/// Raises the soft limit to the hard one: what a server does at start.
pub fn raise_to_hard() -> io::Result<u64> {
    let limit = current()?;
    raise(limit.rlim_max)
}

fn current() -> io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through a pointer to a live, writable value.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit)
}

fn set(limit: &libc::rlimit) -> io::Result<()> {
    // SAFETY: setrlimit only reads the `rlimit` it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_rises_to_what_is_asked_within_the_hard_limit() {
        let before = current().unwrap();
        let wanted = before.rlim_cur.min(before.rlim_max);
        assert_eq!(raise(wanted).unwrap(), before.rlim_cur, "already enough");
        let hard = raise_to_hard().unwrap();
        assert!(hard >= before.rlim_max.min(before.rlim_cur), "{hard}");
        assert_eq!(current().unwrap().rlim_cur, hard);
    }
}
