//! When a closed account's records must be gone: seven working days after closure
//! (promise P4). Working days are Monday to Friday in the operator's time zone, minus
//! configured holidays. Pure functions of their inputs — the clock is passed in — so
//! the deadline table, daylight-saving changes included, is tested directly.

use std::collections::BTreeSet;

use jiff::civil::{Date, Weekday};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, Zoned};

/// Working days between closure and the deadline.
pub const WORKING_DAYS: u32 = 7;

/// The shortest time 7 working days can take: five weekdays plus a weekend, plus two.
pub const SHORTEST_DEADLINE: SignedDuration = SignedDuration::from_hours(9 * 24);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CalendarError {
    #[error("unknown time zone {0:?}")]
    TimeZone(String),
    #[error("a holiday is not a date of the form YYYY-MM-DD: {0:?}")]
    Holiday(String),
    #[error(
        "a grace period of {0} could pass the deletion deadline; it must be shorter than 9 days"
    )]
    GraceTooLong(String),
}

/// Which days count as working days, and where.
#[derive(Debug, Clone)]
pub struct WorkingCalendar {
    time_zone: TimeZone,
    holidays: BTreeSet<Date>,
}

impl WorkingCalendar {
    /// `time_zone`: an IANA name such as `Europe/Berlin`; `holidays`: `YYYY-MM-DD`.
    pub fn new(time_zone: &str, holidays: &[String]) -> Result<Self, CalendarError> {
        let time_zone =
            TimeZone::get(time_zone).map_err(|_| CalendarError::TimeZone(time_zone.to_string()))?;
        let holidays = holidays
            .iter()
            .map(|h| {
                h.parse::<Date>()
                    .map_err(|_| CalendarError::Holiday(h.clone()))
            })
            .collect::<Result<_, _>>()?;
        Ok(WorkingCalendar {
            time_zone,
            holidays,
        })
    }

    pub fn is_working_day(&self, date: Date) -> bool {
        !matches!(date.weekday(), Weekday::Saturday | Weekday::Sunday)
            && !self.holidays.contains(&date)
    }

    /// The deletion deadline for an account closed at `closed_at`: the same local time
    /// of day, seven working days later (the day of closure does not count). A local
    /// time that does not exist that day (a daylight-saving gap) moves to the earlier
    /// instant, so the deadline is never later than promised.
    pub fn due_at(&self, closed_at: Timestamp) -> Timestamp {
        let local = closed_at.to_zoned(self.time_zone.clone());
        let mut date = local.date();
        let mut counted = 0;
        while counted < WORKING_DAYS {
            date = date.tomorrow().unwrap_or(date);
            if self.is_working_day(date) {
                counted += 1;
            }
        }
        let due = date.to_datetime(local.time());
        self.time_zone
            .to_ambiguous_zoned(due)
            .earlier()
            .map(|z: Zoned| z.timestamp())
            // Out of jiff's range (year 9999): the latest representable day works.
            .unwrap_or(closed_at)
    }

    /// Checks a grace period (the time a closed account may still be reopened)
    /// against the shortest possible deadline.
    pub fn check_grace(grace: SignedDuration) -> Result<(), CalendarError> {
        if grace.is_negative() || grace >= SHORTEST_DEADLINE {
            return Err(CalendarError::GraceTooLong(format!("{grace:#}")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn calendar(holidays: &[&str]) -> WorkingCalendar {
        let holidays: Vec<String> = holidays.iter().map(|h| h.to_string()).collect();
        WorkingCalendar::new("Europe/Berlin", &holidays).unwrap()
    }

    fn berlin(s: &str) -> Timestamp {
        format!("{s}[Europe/Berlin]")
            .parse::<Zoned>()
            .unwrap()
            .timestamp()
    }

    #[test]
    fn deadline_table_for_every_weekday() {
        let c = calendar(&[]);
        // 2026-11-23 is a Monday.
        let table = [
            ("2026-11-23T10:00", "2026-12-02T10:00"), // Mon → Wed next week
            ("2026-11-24T10:00", "2026-12-03T10:00"), // Tue → Thu
            ("2026-11-25T10:00", "2026-12-04T10:00"), // Wed → Fri
            ("2026-11-26T10:00", "2026-12-07T10:00"), // Thu → Mon
            ("2026-11-27T10:00", "2026-12-08T10:00"), // Fri → Tue
            ("2026-11-28T10:00", "2026-12-08T10:00"), // Sat → Tue
            ("2026-11-29T10:00", "2026-12-08T10:00"), // Sun → Tue
        ];
        for (closed, due) in table {
            assert_eq!(c.due_at(berlin(closed)), berlin(due), "closed {closed}");
        }
    }

    #[test]
    fn holidays_do_not_count() {
        // Christmas: 24–26 Dec 2026 are Thu–Sat; with 24 and 25 as holidays.
        let c = calendar(&["2026-12-24", "2026-12-25"]);
        // Closed Mon 21 Dec: Tue 22, Wed 23, (24, 25 holidays), Mon 28, Tue 29, Wed 30,
        // Thu 31, Fri 1 Jan.
        assert_eq!(
            c.due_at(berlin("2026-12-21T09:30")),
            berlin("2027-01-01T09:30")
        );
        // Closed after the holidays: unaffected by them.
        assert_eq!(
            c.due_at(berlin("2026-12-28T09:30")),
            berlin("2027-01-06T09:30")
        );
        // Without holidays the same closure is due two working days earlier.
        assert_eq!(
            calendar(&[]).due_at(berlin("2026-12-21T09:30")),
            berlin("2026-12-30T09:30")
        );
    }

    #[test]
    fn daylight_saving_changes_keep_the_local_time() {
        let c = calendar(&[]);
        // Clocks go back on Sun 25 Oct 2026 in Berlin: the deadline keeps 14:00 local,
        // which is one more hour of elapsed time.
        let closed = berlin("2026-10-22T14:00");
        let due = c.due_at(closed);
        assert_eq!(due, berlin("2026-11-02T14:00"));
        assert_eq!(
            due.duration_since(closed),
            SignedDuration::from_hours(11 * 24 + 1)
        );
        // Spring forward on Sun 29 Mar 2026: 02:30 does not exist that day, but the
        // deadline lands on a weekday; a closure at 02:30 keeps 02:30.
        let closed = berlin("2026-03-26T02:30");
        assert_eq!(c.due_at(closed), berlin("2026-04-06T02:30"));
    }

    #[test]
    fn unknown_zones_and_bad_holidays_are_refused() {
        assert!(matches!(
            WorkingCalendar::new("Mars/Olympus", &[]),
            Err(CalendarError::TimeZone(_))
        ));
        assert!(matches!(
            WorkingCalendar::new("UTC", &["25.12.2026".into()]),
            Err(CalendarError::Holiday(_))
        ));
        assert!(WorkingCalendar::check_grace(SignedDuration::ZERO).is_ok());
        assert!(WorkingCalendar::check_grace(SignedDuration::from_hours(48)).is_ok());
        assert!(WorkingCalendar::check_grace(SHORTEST_DEADLINE).is_err());
        assert!(WorkingCalendar::check_grace(SignedDuration::from_hours(-1)).is_err());
    }

    proptest! {
        #[test]
        fn never_later_than_seven_working_days_never_earlier_than_any_allowed_grace(
            seconds in 1_600_000_000i64..2_100_000_000i64,
            holiday_offsets in proptest::collection::vec(0i64..30, 0..6),
            grace_hours in 0i64..(9 * 24),
        ) {
            let closed = Timestamp::from_second(seconds).unwrap();
            let base = closed.to_zoned(TimeZone::get("Europe/Berlin").unwrap()).date();
            let holidays: Vec<String> = holiday_offsets
                .iter()
                .filter_map(|d| base.checked_add(jiff::Span::new().days(*d)).ok())
                .map(|d| d.to_string())
                .collect();
            let c = WorkingCalendar::new("Europe/Berlin", &holidays).unwrap();
            let due = c.due_at(closed);
            // Count the working days strictly after the closure day up to the due day.
            let due_date = due.to_zoned(TimeZone::get("Europe/Berlin").unwrap()).date();
            let mut d = base;
            let mut working = 0;
            while d < due_date {
                d = d.tomorrow().unwrap();
                if c.is_working_day(d) {
                    working += 1;
                }
            }
            prop_assert_eq!(working, WORKING_DAYS);
            prop_assert!(c.is_working_day(due_date));
            // Never earlier than any grace period the configuration accepts.
            let grace = SignedDuration::from_hours(grace_hours);
            prop_assert!(WorkingCalendar::check_grace(grace).is_ok());
            prop_assert!(due.duration_since(closed) > grace);
        }
    }
}
