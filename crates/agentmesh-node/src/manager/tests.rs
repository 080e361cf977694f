use super::*;

#[test]
fn rotation_is_at_half_life_with_ten_percent_jitter() {
    let nb = UNIX_EPOCH + Duration::from_secs(1000);
    let na = nb + Duration::from_secs(100);
    let mut seen = Vec::new();
    for _ in 0..200 {
        let at = rotation_time(nb, na)
            .duration_since(nb)
            .unwrap()
            .as_secs_f64();
        assert!((40.0..=60.0).contains(&at), "{at}");
        seen.push(at);
    }
    // Jitter really varies the time.
    seen.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert!(seen[199] - seen[0] > 5.0);
}

#[test]
fn backoff_grows_and_is_capped() {
    let mut b = Backoff::default();
    let waits: Vec<Duration> = (0..12).map(|_| b.next()).collect();
    assert!(waits.iter().all(|w| *w <= MAX_BACKOFF));
    assert!(waits[11] >= MAX_BACKOFF / 2);
    b.reset();
    assert!(b.next() <= Duration::from_millis(200));
}
