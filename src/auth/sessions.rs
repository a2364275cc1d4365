//! Server-side sessions of the hub's web view. The cookie carries only a random
//! id (256 bits); everything else stays here. A session ends on sign-out, after
//! `idle` without a request, and `absolute` after sign-in, whichever comes first.
//! Each session has its own CSRF token for the forms it is shown. One-time
//! sign-in links (the demo's) are kept here too, each usable once.

use super::users::Person;
use base64::Engine;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const IDLE: Duration = Duration::from_secs(30 * 60);
pub const ABSOLUTE: Duration = Duration::from_secs(8 * 60 * 60);
/// How long a one-time sign-in link stays usable.
pub const LINK_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// Sessions kept at most (the oldest go first).
const CAPACITY: usize = 10_000;

/// 256 random bits, base64url without padding.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).expect("the system has randomness");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Compares two secrets in time that does not depend on where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Debug, Clone)]
pub struct Session {
    pub person: Person,
    /// The token every form of this session carries.
    pub csrf: String,
    created: Instant,
    seen: Instant,
}

pub struct Sessions {
    live: Mutex<HashMap<String, Session>>,
    links: Mutex<HashMap<String, (Instant, Person)>>,
    idle: Duration,
    absolute: Duration,
}

impl Default for Sessions {
    fn default() -> Sessions {
        Sessions::new(IDLE, ABSOLUTE)
    }
}

impl Sessions {
    pub fn new(idle: Duration, absolute: Duration) -> Sessions {
        Sessions {
            live: Mutex::default(),
            links: Mutex::default(),
            idle,
            absolute,
        }
    }

    /// Starts a session for `person`: its id (the cookie's value) and the session.
    pub fn start(&self, person: Person) -> (String, Session) {
        let now = Instant::now();
        let session = Session {
            person,
            csrf: random_token(),
            created: now,
            seen: now,
        };
        let id = random_token();
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.retain(|_, s| !self.expired(s, now));
        if live.len() >= CAPACITY {
            if let Some(oldest) = live.iter().min_by_key(|(_, s)| s.seen).map(|(k, _)| k.clone()) {
                live.remove(&oldest);
            }
        }
        live.insert(id.clone(), session.clone());
        (id, session)
    }

    fn expired(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.seen) > self.idle || now.duration_since(s.created) > self.absolute
    }

    /// The live session with this id, its idle clock restarted; an expired one is removed.
    pub fn get(&self, id: &str) -> Option<Session> {
        let now = Instant::now();
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let s = live.get_mut(id)?;
        if self.expired(s, now) {
            live.remove(id);
            return None;
        }
        s.seen = now;
        Some(s.clone())
    }

    /// Ends a session (sign-out): its id is never accepted again.
    pub fn end(&self, id: &str) -> Option<Session> {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).remove(id)
    }

    /// A one-time sign-in link's token for `person`, usable once within `LINK_LIFETIME`.
    pub fn link(&self, person: Person) -> String {
        let token = random_token();
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        links.retain(|_, (t, _)| now.duration_since(*t) < LINK_LIFETIME);
        links.insert(token.clone(), (now, person));
        token
    }

    /// The person a link was made for; the link is used up either way.
    pub fn redeem(&self, token: &str) -> Option<Person> {
        let (made, person) = self.links.lock().unwrap_or_else(|p| p.into_inner()).remove(token)?;
        (made.elapsed() < LINK_LIFETIME).then_some(person)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn someone() -> Person {
        Person {
            name: "a".into(),
            roles: vec![crate::auth::Role::Analyst],
            region: None,
            provider: None,
            via: "local".into(),
        }
    }

    #[test]
    fn sessions_end_on_sign_out_and_when_idle() {
        let sessions = Sessions::new(Duration::from_millis(50), Duration::from_secs(60));
        let (id, s) = sessions.start(someone());
        assert_eq!(s.csrf.len(), 43);
        assert!(sessions.get(&id).is_some());
        assert!(sessions.end(&id).is_some());
        assert!(sessions.get(&id).is_none(), "a signed-out id is never accepted again");
        let (id, _) = sessions.start(someone());
        std::thread::sleep(Duration::from_millis(80));
        assert!(sessions.get(&id).is_none(), "idle too long");
        let short = Sessions::new(Duration::from_secs(60), Duration::from_millis(50));
        let (id, _) = short.start(someone());
        std::thread::sleep(Duration::from_millis(30));
        assert!(short.get(&id).is_some());
        std::thread::sleep(Duration::from_millis(30));
        assert!(short.get(&id).is_none(), "past the absolute limit, however active");
    }

    #[test]
    fn links_work_once() {
        let sessions = Sessions::default();
        let t = sessions.link(someone());
        assert_eq!(sessions.redeem(&t), Some(someone()));
        assert_eq!(sessions.redeem(&t), None);
        assert!(same_secret("abc", "abc") && !same_secret("abc", "abd") && !same_secret("abc", "ab"));
    }
}
