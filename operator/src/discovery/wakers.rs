//! Which stream waits on which topic of the index, so that a change wakes the streams subscribed
//! to what it touched and no others: its cost follows its fan-out, not the number of proxies.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::index::{Changes, TopicId};

#[derive(Default)]
pub struct Wakers {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    streams: HashMap<u64, Arc<Notify>>,
    by_topic: HashMap<TopicId, HashSet<u64>>,
}

impl Wakers {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stream `id` joins: it is woken by changes to everything from now on, and by changes to the
    /// topics it watches.
    pub fn join(&self, id: u64) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        self.lock().streams.insert(id, notify.clone());
        notify
    }

    /// Stream `id` ends; `topics` are those it still watches.
    pub fn leave<'a>(&self, id: u64, topics: impl IntoIterator<Item = &'a TopicId>) {
        let mut inner = self.lock();
        inner.streams.remove(&id);
        for topic in topics {
            inner.unwatch(id, topic);
        }
    }

    /// Wakes each stream that watches a changed topic, once; returns how many it woke. A stream
    /// busy when woken finds the wake-up when it next waits (`Notify` keeps one permit).
    pub fn wake(&self, changes: &Changes) -> usize {
        let inner = self.lock();
        if changes.everything {
            inner.streams.values().for_each(|notify| notify.notify_one());
            return inner.streams.len();
        }
        let woken: HashSet<u64> = changes
            .topics
            .iter()
            .filter_map(|topic| inner.by_topic.get(&topic.id()))
            .flatten()
            .copied()
            .collect();
        for id in &woken {
            if let Some(notify) = inner.streams.get(id) {
                notify.notify_one();
            }
        }
        woken.len()
    }

    /// How many streams watch `topic`.
    #[cfg(test)]
    pub fn watchers(&self, topic: TopicId) -> usize {
        self.lock().by_topic.get(&topic).map_or(0, HashSet::len)
    }
}

impl Inner {
    fn unwatch(&mut self, id: u64, topic: &TopicId) {
        if let Some(ids) = self.by_topic.get_mut(topic) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_topic.remove(topic);
            }
        }
    }
}

/// The topics one stream watches, counted: several of its subscriptions may share one (two
/// names of a Service, a backend of two routes).
pub struct Watching {
    id: u64,
    counts: HashMap<TopicId, usize>,
}

impl Watching {
    pub fn new(id: u64) -> Self {
        Self { id, counts: HashMap::new() }
    }

    /// One subscription's topics go from `old` to `new`.
    pub fn replace(&mut self, wakers: &Wakers, old: &[TopicId], new: &[TopicId]) {
        if old == new {
            return;
        }
        let mut inner = wakers.lock();
        for topic in new {
            let count = self.counts.entry(*topic).or_default();
            *count += 1;
            if *count == 1 {
                inner.by_topic.entry(*topic).or_default().insert(self.id);
            }
        }
        for topic in old {
            if let Some(count) = self.counts.get_mut(topic) {
                *count -= 1;
                if *count == 0 {
                    self.counts.remove(topic);
                    inner.unwatch(self.id, topic);
                }
            }
        }
    }

    pub fn topics(&self) -> impl Iterator<Item = &TopicId> {
        self.counts.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::index::Topic;

    fn topic(name: &str) -> Topic {
        Topic::Service(("shop".to_owned(), name.to_owned()))
    }

    fn service(name: &str) -> TopicId {
        topic(name).id()
    }

    fn changes(names: &[&str]) -> Changes {
        Changes { everything: false, topics: names.iter().map(|name| topic(name)).collect() }
    }

    #[test]
    fn a_change_wakes_only_the_streams_that_watch_it_and_each_once() {
        let wakers = Wakers::default();
        let (_a, _b, _c) = (wakers.join(1), wakers.join(2), wakers.join(3));
        let mut a = Watching::new(1);
        let mut b = Watching::new(2);
        a.replace(&wakers, &[], &[service("reviews"), service("ratings")]);
        b.replace(&wakers, &[], &[service("ratings")]);
        assert_eq!(wakers.wake(&changes(&["reviews"])), 1);
        assert_eq!(wakers.wake(&changes(&["reviews", "ratings"])), 2, "a wakes once");
        assert_eq!(wakers.wake(&changes(&["cart"])), 0);
        assert_eq!(wakers.wake(&Changes { everything: true, ..Changes::default() }), 3);
    }

    #[test]
    fn a_topic_two_subscriptions_share_stays_watched_until_both_let_go() {
        let wakers = Wakers::default();
        let _notify = wakers.join(1);
        let mut watching = Watching::new(1);
        watching.replace(&wakers, &[], &[service("reviews")]);
        watching.replace(&wakers, &[], &[service("reviews"), service("reviews-v1")]);
        watching.replace(&wakers, &[service("reviews")], &[]);
        assert_eq!(wakers.watchers(service("reviews")), 1, "the second subscription still watches it");
        watching.replace(&wakers, &[service("reviews"), service("reviews-v1")], &[service("ratings")]);
        assert_eq!(wakers.watchers(service("reviews")), 0);
        assert_eq!(wakers.watchers(service("reviews-v1")), 0);
        wakers.leave(1, watching.topics());
        assert_eq!(wakers.watchers(service("ratings")), 0, "nothing is left of a stream that ended");
        assert_eq!(wakers.wake(&changes(&["ratings"])), 0);
    }

    #[tokio::test]
    async fn a_wake_while_the_stream_is_busy_is_kept_for_its_next_wait() {
        let wakers = Wakers::default();
        let notify = wakers.join(1);
        let mut watching = Watching::new(1);
        watching.replace(&wakers, &[], &[service("reviews")]);
        wakers.wake(&changes(&["reviews"]));
        tokio::time::timeout(std::time::Duration::from_secs(1), notify.notified())
            .await
            .expect("the wake-up sent before the stream waited is not lost");
    }
}
