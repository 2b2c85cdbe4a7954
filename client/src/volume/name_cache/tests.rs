use super::*;

const DIR: Ino = 7;

fn file(ino: Ino, nlink: u32) -> Attr {
    Attr {
        ino,
        kind: FileKind::File,
        perm: 0o644,
        nlink,
        uid: 0,
        gid: 0,
        rdev: 0,
        size: ino * 10,
        atime_ns: 0,
        mtime_ns: 0,
        ctime_ns: 0,
    }
}

fn page(names: &[(&str, Ino)], complete: bool) -> NamePage {
    NamePage {
        entries: names
            .iter()
            .map(|(n, ino)| (n.as_bytes().to_vec(), file(*ino, 1)))
            .collect(),
        complete,
    }
}

/// Fetches a page from `from` the way a lookup does.
fn fetched(c: &NameCache, from: &str, p: NamePage) -> Fetch {
    let f = c.begin(DIR, from.as_bytes());
    c.install(DIR, from.as_bytes(), f, p);
    f
}

#[test]
fn a_page_answers_for_its_range_and_nothing_past_it() {
    let c = NameCache::default();
    assert_eq!(c.get(DIR, b"b"), Cached::Miss);
    fetched(&c, "b", page(&[("b", 2), ("d", 4)], false));
    assert_eq!(c.get(DIR, b"b"), Cached::Found(file(2, 1)));
    assert_eq!(c.get(DIR, b"c"), Cached::Absent);
    assert_eq!(c.get(DIR, b"d"), Cached::Found(file(4, 1)));
    // Outside the range the page covers: before its first name, after its
    // last (more entries may follow), or in another directory.
    assert_eq!(c.get(DIR, b"a"), Cached::Miss);
    assert_eq!(c.get(DIR, b"e"), Cached::Miss);
    assert_eq!(c.get(DIR + 1, b"c"), Cached::Miss);
}

#[test]
fn a_complete_page_covers_the_rest_of_the_directory() {
    let c = NameCache::default();
    fetched(&c, "m", page(&[("m", 2)], true));
    assert_eq!(c.get(DIR, b"zzz"), Cached::Absent);
    assert_eq!(c.get(DIR, b"l"), Cached::Miss);
    // An empty, incomplete page says nothing (the service never sends
    // one): it is not kept.
    let c = NameCache::default();
    fetched(&c, "m", page(&[], false));
    assert_eq!(c.get(DIR, b"m"), Cached::Miss);
}

#[test]
fn pages_grow_while_lookups_scan_forward_and_start_small_otherwise() {
    let c = NameCache::default();
    assert_eq!(c.begin(DIR, b"a").limit, FIRST_PAGE);
    fetched(
        &c,
        "a",
        page(&[("a", 1), ("b", 2), ("c", 3), ("d", 4)], false),
    );
    let f = c.begin(DIR, b"e");
    assert_eq!(f.limit, FIRST_PAGE * 4);
    c.install(DIR, b"e", f, page(&[("e", 5), ("f", 6)], false));
    assert_eq!(c.begin(DIR, b"g").limit, FIRST_PAGE * 16);
    // A lookup behind the page is not a scan.
    assert_eq!(c.begin(DIR, b"a").limit, FIRST_PAGE);
    let mut limit = FIRST_PAGE;
    for _ in 0..10 {
        limit = (limit * 4).min(MAX_PAGE);
    }
    assert_eq!(limit, MAX_PAGE);
}

#[test]
fn this_mounts_creates_and_unlinks_change_the_page() {
    let c = NameCache::default();
    fetched(&c, "a", page(&[("a", 1)], true));
    c.created(DIR, b"b", &file(2, 1));
    assert_eq!(c.get(DIR, b"b"), Cached::Found(file(2, 1)));
    c.removed(DIR, b"a");
    assert_eq!(c.get(DIR, b"a"), Cached::Absent);
    // A create outside the page's range is not added to it.
    c.created(DIR, b"0", &file(3, 1));
    assert_eq!(c.get(DIR, b"0"), Cached::Miss);
    c.forget_dir(DIR);
    assert_eq!(c.get(DIR, b"b"), Cached::Miss);
}

#[test]
fn changed_inodes_and_hard_links_are_asked_for_again() {
    let c = NameCache::default();
    let mut p = page(&[("a", 1), ("b", 2)], true);
    p.entries.push((b"c".to_vec(), file(3, 2)));
    fetched(&c, "a", p);
    c.changed(1);
    assert_eq!(c.get(DIR, b"a"), Cached::Stale);
    assert_eq!(c.get(DIR, b"b"), Cached::Found(file(2, 1)));
    assert_eq!(c.get(DIR, b"c"), Cached::Stale, "a file with two links");
    // A page fetched after the change answers for it again.
    fetched(&c, "a", page(&[("a", 1)], true));
    assert_eq!(c.get(DIR, b"a"), Cached::Found(file(1, 1)));
}

#[test]
fn a_page_fetched_across_a_change_of_its_directory_or_a_lock_is_not_kept() {
    let c = NameCache::default();
    let f = c.begin(DIR, b"a");
    c.created(DIR, b"x", &file(9, 1));
    c.install(DIR, b"a", f, page(&[("a", 1)], true));
    assert_eq!(c.get(DIR, b"x"), Cached::Miss, "the page may predate x");

    let f = c.begin(DIR, b"a");
    c.clear();
    c.install(DIR, b"a", f, page(&[("a", 1)], true));
    assert_eq!(c.get(DIR, b"a"), Cached::Miss);

    // A change of another inode does not matter to the directory's page.
    let f = c.begin(DIR, b"a");
    c.changed(55);
    c.install(DIR, b"a", f, page(&[("a", 1)], true));
    assert_eq!(c.get(DIR, b"a"), Cached::Found(file(1, 1)));
    c.clear();
    assert_eq!(c.get(DIR, b"a"), Cached::Miss);
}

#[test]
fn a_page_is_as_old_as_its_fetch() {
    let c = NameCache::default();
    let mut f = c.begin(DIR, b"a");
    f.began -= PAGE_TTL;
    c.install(DIR, b"a", f, page(&[("a", 1)], true));
    assert_eq!(
        c.get(DIR, b"a"),
        Cached::Miss,
        "a fetch that took a page's lifetime"
    );
}

#[test]
fn pages_expire() {
    let c = NameCache::default();
    fetched(&c, "a", page(&[("a", 1)], true));
    c.inner.lock().unwrap().dirs.get_mut(&DIR).unwrap().at -= PAGE_TTL;
    assert_eq!(c.get(DIR, b"a"), Cached::Miss);
    assert_eq!(c.get(DIR, b"b"), Cached::Miss);
}

#[test]
fn a_flood_of_changes_drops_the_pages_instead_of_growing_without_bound() {
    let c = NameCache::default();
    fetched(&c, "a", page(&[("a", 1)], true));
    for ino in 100..=100 + SWEEP_MARKS_AT as Ino {
        c.changed(ino);
    }
    let inner = c.inner.lock().unwrap();
    assert!(inner.changed.len() < SWEEP_MARKS_AT);
    assert!(inner.dirs.is_empty());
}
