//! The degraded read's choice of nodes and its wait, on tokio's paused
//! clock: a node that never answers, one that fails, suspect ones.

use std::sync::Mutex;

use futures::future::{self, BoxFuture, FutureExt};

use super::*;

const SLOW: Duration = Duration::from_secs(1);

/// A shard read per index: `Some(i)` as its bytes, at once, unless `how`
/// says it hangs (never answers) or fails (None at once); records the
/// order the indices were asked in.
fn reader<'a>(
    asked: &'a Mutex<Vec<usize>>,
    how: impl Fn(usize) -> Outcome + 'a,
) -> impl Fn(usize) -> BoxFuture<'a, Option<Vec<u8>>> + 'a {
    move |i| {
        asked.lock().unwrap().push(i);
        match how(i) {
            Outcome::Answers => future::ready(Some(vec![i as u8])).boxed(),
            Outcome::Fails => future::ready(None).boxed(),
            Outcome::Hangs => future::pending().boxed(),
        }
    }
}

#[derive(Clone, Copy)]
enum Outcome {
    Answers,
    Fails,
    Hangs,
}

/// [`gather`] with `SLOW`, failing rather than waiting for ever.
async fn run<F, Fut>(k: usize, order: &[usize], read: F) -> Gathered
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Option<Vec<u8>>>,
{
    tokio::time::timeout(Duration::from_secs(60), gather(k, order, SLOW, read))
        .await
        .expect("the read waited for a node that never answers")
}

fn got(g: &Gathered) -> Vec<usize> {
    (0..g.shards.len())
        .filter(|&i| g.shards[i].as_deref() == Some(&[i as u8][..]))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_node_that_hangs_costs_the_read_slow_after_and_is_named_slow() {
    let asked = Mutex::new(Vec::new());
    let start = Instant::now();
    let read = reader(&asked, |i| match i {
        1 => Outcome::Hangs,
        _ => Outcome::Answers,
    });
    let g = run(4, &[0, 1, 2, 3, 4, 5], read).await;
    assert_eq!(
        start.elapsed(),
        SLOW,
        "waited for the hung node once, no more"
    );
    assert_eq!(g.count, 4);
    assert_eq!(got(&g), vec![0, 2, 3, 4]);
    assert_eq!(g.slow, vec![1]);
    // K at first, then every node left at once.
    assert_eq!(*asked.lock().unwrap(), vec![0, 1, 2, 3, 4, 5]);
}

#[tokio::test(start_paused = true)]
async fn a_node_that_fails_is_replaced_by_the_next_without_waiting() {
    let asked = Mutex::new(Vec::new());
    let start = Instant::now();
    let read = reader(&asked, |i| match i {
        0 => Outcome::Fails,
        _ => Outcome::Answers,
    });
    let g = run(4, &[0, 1, 2, 3, 4, 5], read).await;
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(got(&g), vec![1, 2, 3, 4]);
    assert!(g.slow.is_empty());
    assert_eq!(*asked.lock().unwrap(), vec![0, 1, 2, 3, 4]);
}

#[tokio::test(start_paused = true)]
async fn nodes_ordered_last_are_not_asked_when_the_others_answer() {
    // Index 1's node is suspect: the caller orders it last.
    let asked = Mutex::new(Vec::new());
    let read = reader(&asked, |_| Outcome::Answers);
    let g = run(4, &[0, 2, 3, 4, 5, 1], read).await;
    assert_eq!(got(&g), vec![0, 2, 3, 4]);
    assert_eq!(*asked.lock().unwrap(), vec![0, 2, 3, 4]);
}

#[tokio::test(start_paused = true)]
async fn too_few_answers_end_the_read_with_what_came() {
    let asked = Mutex::new(Vec::new());
    let read = reader(&asked, |i| match i {
        0..=2 => Outcome::Fails,
        _ => Outcome::Answers,
    });
    let g = run(4, &[0, 1, 2, 3, 4, 5], read).await;
    assert_eq!(g.count, 3);
    assert_eq!(got(&g), vec![3, 4, 5]);
    assert_eq!(asked.lock().unwrap().len(), 6);
}

#[tokio::test(start_paused = true)]
async fn only_nodes_silent_for_slow_after_are_named_slow() {
    // K = 3. Index 2 hangs; index 0 fails after 0.9 s, so index 3 is
    // asked then and hangs too; the hedge at 1 s asks 4 and 5, which
    // answer. Only index 2 was silent for `SLOW`.
    let asked = Mutex::new(Vec::new());
    let start = Instant::now();
    let read = |i: usize| -> BoxFuture<'_, Option<Vec<u8>>> {
        asked.lock().unwrap().push(i);
        match i {
            0 => tokio::time::sleep(Duration::from_millis(900))
                .map(|()| None)
                .boxed(),
            2 | 3 => future::pending().boxed(),
            _ => future::ready(Some(vec![i as u8])).boxed(),
        }
    };
    let g = run(3, &[0, 1, 2, 3, 4, 5], read).await;
    assert_eq!(start.elapsed(), SLOW);
    assert_eq!(got(&g), vec![1, 4, 5]);
    assert_eq!(g.slow, vec![2]);
    assert_eq!(*asked.lock().unwrap(), vec![0, 1, 2, 3, 4, 5]);
}

/// A put per index, durable (true) at once unless `how` says it hangs or
/// fails; records the order the indices were asked in.
fn putter<'a>(
    asked: &'a Mutex<Vec<usize>>,
    how: impl Fn(usize) -> Outcome + 'a,
) -> impl Fn(usize) -> BoxFuture<'a, bool> + 'a {
    move |i| {
        asked.lock().unwrap().push(i);
        match how(i) {
            Outcome::Answers => future::ready(true).boxed(),
            Outcome::Fails => future::ready(false).boxed(),
            Outcome::Hangs => future::pending().boxed(),
        }
    }
}

/// [`settle`] of 6 shards, 5 needed, a grace of `SLOW`; fails rather
/// than waiting for ever.
async fn store<'a>(
    first: &[usize],
    held: &[usize],
    put: impl Fn(usize) -> BoxFuture<'a, bool>,
) -> Settled {
    let s = settle(6, first.to_vec(), held.to_vec(), 5, SLOW, put);
    tokio::time::timeout(Duration::from_secs(60), s)
        .await
        .expect("the store waited for a node that never answers")
}

#[tokio::test(start_paused = true)]
async fn a_node_that_hangs_after_enough_are_durable_costs_the_grace() {
    let asked = Mutex::new(Vec::new());
    let start = Instant::now();
    let put = putter(&asked, |i| match i {
        2 => Outcome::Hangs,
        _ => Outcome::Answers,
    });
    let s = store(&[0, 1, 2, 3, 4, 5], &[], put).await;
    assert_eq!(start.elapsed(), SLOW);
    assert_eq!((s.durable, s.silent.clone()), (5, vec![2]));
    assert!(!s.stored[2]);
}

#[tokio::test(start_paused = true)]
async fn nodes_held_back_are_not_asked_while_the_others_suffice() {
    let asked = Mutex::new(Vec::new());
    let start = Instant::now();
    let s = store(&[0, 1, 2, 3, 4], &[5], putter(&asked, |_| Outcome::Answers)).await;
    assert_eq!(start.elapsed(), Duration::ZERO, "nothing left to wait for");
    assert_eq!(s.durable, 5);
    assert!(s.silent.is_empty());
    assert_eq!(*asked.lock().unwrap(), vec![0, 1, 2, 3, 4]);
}

#[tokio::test(start_paused = true)]
async fn nodes_held_back_are_asked_once_the_others_cannot_suffice() {
    // One node is down (not asked, not held), one slow: the four others
    // can never make five durable, so the slow one is asked at once.
    let asked = Mutex::new(Vec::new());
    let s = store(&[0, 1, 2, 3], &[5], putter(&asked, |_| Outcome::Answers)).await;
    assert_eq!(s.durable, 5);
    assert_eq!(asked.lock().unwrap().len(), 5);
    // A failure among the first makes them too few: the held one is
    // asked then, and the block is durable.
    let asked = Mutex::new(Vec::new());
    let put = putter(&asked, |i| match i {
        0 => Outcome::Fails,
        _ => Outcome::Answers,
    });
    let s = store(&[0, 1, 2, 3, 4], &[5], put).await;
    assert_eq!(s.durable, 5);
    assert!(s.stored[5] && !s.stored[0]);
}

#[tokio::test(start_paused = true)]
async fn too_few_durable_ends_the_store_with_what_came() {
    let asked = Mutex::new(Vec::new());
    let put = putter(&asked, |i| match i {
        0 | 1 => Outcome::Fails,
        _ => Outcome::Answers,
    });
    let s = store(&[0, 1, 2, 3, 4, 5], &[], put).await;
    assert_eq!(s.durable, 4);
    assert!(s.silent.is_empty());
}

#[tokio::test(start_paused = true)]
async fn nodes_held_back_are_asked_when_another_hangs_before_enough_are_durable() {
    // Index 5 is held (slow a moment ago) and index 1 hangs: the four
    // others answer at once, one short; the held one is asked after the
    // grace, not after the hung one's put times out.
    let asked = Mutex::new(Vec::new());
    let start = Instant::now();
    let put = putter(&asked, |i| match i {
        1 => Outcome::Hangs,
        _ => Outcome::Answers,
    });
    let s = store(&[0, 1, 2, 3, 4], &[5], put).await;
    assert_eq!(s.durable, 5);
    assert!(s.stored[5]);
    assert_eq!(s.silent, vec![1]);
    assert_eq!(
        start.elapsed(),
        2 * SLOW,
        "the grace to ask the held one, then the stragglers'"
    );
}
