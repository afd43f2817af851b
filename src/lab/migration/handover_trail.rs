//! The first-frame handover's steps as the two hosts' vmtun logged them, for the real-VM
//! timeline: when the new host captured the guest's first frame on its interface, and when
//! the old host, on the new host's report, took the VM's routes off its source's
//! interface. Between `RESUME` and the client's first reply after the move these say which
//! link of the chain took the time. Pure: it reads log text.

/// What the new host logs on the guest's first frame (with the frame's capture time as
/// `frame_unix_ns=`).
const FIRST_FRAME: &str = "handover: the guest's first frame on";
/// What the old host logs when it takes the VM's routes off on the new host's report.
const ROUTES_OFF: [&str; 2] = [
    "the new host reports the guest running there",
    "are removed",
];

/// The steps found in the new host's log `new` and the old host's `old` (Unix ns, what),
/// each the first of its kind; a step not logged is left out.
pub fn trail(new: &str, old: &str) -> Vec<(u64, String)> {
    let frame = new
        .lines()
        .find(|l| l.contains(FIRST_FRAME))
        .and_then(|l| field(l, "frame_unix_ns"));
    let routes_off = old
        .lines()
        .find(|l| ROUTES_OFF.iter().all(|part| l.contains(part)))
        .and_then(log_time);
    let steps = [
        (
            frame,
            "the new host captures the guest's first frame on vif0",
        ),
        (
            routes_off,
            "the old host takes the VM's routes off vif0 (the new host's report)",
        ),
    ];
    steps
        .into_iter()
        .filter_map(|(at, what)| Some((at?, what.to_owned())))
        .collect()
}

/// The value of `name=DIGITS` in a log line.
fn field(line: &str, name: &str) -> Option<u64> {
    let start = line.find(&format!("{name}="))? + name.len() + 1;
    let digits: String = line[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The time a vmtun log line starts with (`2026-12-03T22:00:30.882573Z`, UTC), in Unix ns.
fn log_time(line: &str) -> Option<u64> {
    let stamp = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut ymd = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let (hms, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut parts = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (parts.next()??, parts.next()??, parts.next()??);
    let digits = fraction.get(..fraction.len().min(9))?;
    let nanos = digits.parse::<i64>().ok()? * 10_i64.pow(9 - digits.len() as u32);
    let seconds = days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(seconds * 1_000_000_000 + nanos).ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_times_are_utc_unix_nanoseconds() {
        assert_eq!(log_time("1970-01-01T00:00:00.000001Z  INFO x"), Some(1_000));
        // `date -u -d 2026-12-03T22:00:30.882573Z +%s%N`
        assert_eq!(
            log_time("2026-12-03T22:00:30.882573Z  INFO handover: ..."),
            Some(1_796_335_230_882_573_000)
        );
        assert_eq!(
            log_time("2024-02-29T12:00:00Z"),
            Some(1_709_208_000_000_000_000)
        );
        assert_eq!(log_time("not a time"), None);
        assert_eq!(log_time("2026-12-03 22:00:30Z"), None);
    }

    #[test]
    fn the_trail_takes_the_frame_time_and_the_old_hosts_routes_off() {
        let new = "2026-12-03T22:00:30.000001Z  INFO handover: vif0 is up: watching it\n\
                   2026-12-03T22:00:30.882600Z  INFO handover: the guest's first frame on vif0: \
                   it runs here; telling the old host vif=\"vif0\" report=7 \
                   frame_unix_ns=1796335230882573000\n";
        let old = "2026-12-03T22:00:30.883900Z  INFO handover: the new host reports the guest \
                   running there (report 7 of its vif0 [203.0.113.2]): the VM's routes to vif0 \
                   are removed, the tunnel carries its traffic to the new host vif=\"vif0\"\n";
        let trail = trail(new, old);
        assert_eq!(
            trail,
            [
                (
                    1_796_335_230_882_573_000,
                    "the new host captures the guest's first frame on vif0".to_owned()
                ),
                (
                    1_796_335_230_883_900_000,
                    "the old host takes the VM's routes off vif0 (the new host's report)"
                        .to_owned()
                ),
            ]
        );
        assert!(super::trail("", "").is_empty());
    }
}
