import { IRaisedWarning, WarningTracker, staleWarnings } from '../warnings';

const UNTIL = '2026-03-04T12:10:00Z';
const LATER = '2026-03-04T13:10:00Z';

/** Every warning the tracker gives while counting down from..to, one call per second. */
function run(
  tracker: WarningTracker,
  paidUntil: string,
  from: number,
  to: number,
  thresholds = [600, 60]
) {
  const fired: { at: number; threshold: number; secondsLeft: number; save: boolean }[] = [];
  for (let left = from; left >= to; left--) {
    const warning = tracker.update(paidUntil, left, thresholds);
    if (warning) {
      fired.push({ at: left, ...warning });
    }
  }
  return fired;
}

describe('WarningTracker', () => {
  it('fires each threshold once, when the countdown reaches it', () => {
    const tracker = new WarningTracker();
    expect(run(tracker, UNTIL, 700, 0)).toEqual([
      { at: 600, threshold: 600, secondsLeft: 600, save: false },
      { at: 60, threshold: 60, secondsLeft: 60, save: true }
    ]);
    // Polls and ticks that repeat the same numbers fire nothing again.
    expect(run(tracker, UNTIL, 60, 0)).toEqual([]);
  });

  it('shows only the most urgent of thresholds crossed together', () => {
    const tracker = new WarningTracker();
    // The page opened with 30 s left: one warning, and it saves.
    expect(tracker.update(UNTIL, 30, [600, 60])).toEqual({
      threshold: 60,
      secondsLeft: 30,
      save: true
    });
    expect(tracker.update(UNTIL, 29, [600, 60])).toBeNull();
  });

  it('re-arms every threshold when paid_until moves', () => {
    const tracker = new WarningTracker();
    expect(run(tracker, UNTIL, 620, 50)).toHaveLength(2);
    // Extended by an hour: nothing until the new countdown reaches them again.
    expect(tracker.update(LATER, 3650, [600, 60])).toBeNull();
    expect(run(tracker, LATER, 3649, 0).map(w => w.threshold)).toEqual([600, 60]);
  });

  it('fires again at once after a short extension that leaves the time inside a threshold', () => {
    const tracker = new WarningTracker();
    run(tracker, UNTIL, 700, 50);
    expect(tracker.update(LATER, 170, [600, 60])).toEqual({
      threshold: 600,
      secondsLeft: 170,
      save: false
    });
  });

  it('does nothing without a session, a countdown or thresholds', () => {
    const tracker = new WarningTracker();
    expect(tracker.update(null, 10, [600, 60])).toBeNull();
    expect(tracker.update(UNTIL, null, [600, 60])).toBeNull();
    expect(tracker.update(UNTIL, 10, [])).toBeNull();
    expect(tracker.update(UNTIL, 10, [0, -5, NaN])).toBeNull();
  });

  it('accepts thresholds in any order; the smallest is the one that saves', () => {
    const tracker = new WarningTracker();
    expect(run(tracker, UNTIL, 200, 0, [30, 120])).toEqual([
      { at: 120, threshold: 120, secondsLeft: 120, save: false },
      { at: 30, threshold: 30, secondsLeft: 30, save: true }
    ]);
  });

  it('tells a threshold crossed by a late tick as the threshold, and a late page as it is', () => {
    const tracker = new WarningTracker();
    // The tick for 60 came late: the countdown says 58 when it is first seen.
    expect(tracker.update(UNTIL, 612, [600, 60])).toBeNull();
    expect(tracker.update(UNTIL, 598, [600, 60])?.secondsLeft).toBe(600);
    expect(tracker.update(UNTIL, 58, [600, 60])?.secondsLeft).toBe(60);
    expect(new WarningTracker().update(UNTIL, 57, [600, 60])?.secondsLeft).toBe(57);
  });
});

describe('staleWarnings', () => {
  const tenMinutes: IRaisedWarning = {
    id: 'ten',
    paidUntil: UNTIL,
    savedWords: null,
    saveFailed: false
  };
  const saved: IRaisedWarning = {
    id: 'saved',
    paidUntil: UNTIL,
    savedWords: 'Saved 1 document.',
    saveFailed: false
  };
  const raised = [tenMinutes, saved];

  it('keeps every warning while the session counts down to the time they warned about', () => {
    expect(staleWarnings(raised, { stopped: false, paidUntil: UNTIL })).toEqual({
      dismiss: [],
      keepSaved: []
    });
    // The same instant written another way (Python's microseconds, an offset).
    expect(
      staleWarnings(raised, { stopped: false, paidUntil: '2026-03-04T12:10:00.000000+00:00' })
    ).toEqual({ dismiss: [], keepSaved: [] });
  });

  it('dismisses the time-left warnings once stopped, keeping the one that saved', () => {
    expect(staleWarnings(raised, { stopped: true, paidUntil: UNTIL })).toEqual({
      dismiss: ['ten'],
      keepSaved: [saved]
    });
    // The session gone from the status changes nothing about that.
    expect(staleWarnings(raised, { stopped: true, paidUntil: null })).toEqual({
      dismiss: ['ten'],
      keepSaved: [saved]
    });
  });

  it('keeps a failed save to tell once stopped, and dismisses a save that found nothing', () => {
    const failed = {
      ...saved,
      id: 'failed',
      savedWords: 'Saved 0 documents. Could not save: a.ipynb.',
      saveFailed: true
    };
    const nothing = { ...saved, id: 'nothing', savedWords: null };
    expect(staleWarnings([failed, nothing], { stopped: true, paidUntil: UNTIL })).toEqual({
      dismiss: ['nothing'],
      keepSaved: [failed]
    });
  });

  it('dismisses every warning about the old time once extended', () => {
    const later: IRaisedWarning = { ...tenMinutes, id: 'later', paidUntil: LATER };
    expect(
      staleWarnings([...raised, later], { stopped: false, paidUntil: LATER })
    ).toEqual({ dismiss: ['ten', 'saved'], keepSaved: [] });
  });

  it('decides nothing while no paid time is known and the server runs', () => {
    expect(staleWarnings(raised, { stopped: false, paidUntil: null })).toEqual({
      dismiss: [],
      keepSaved: []
    });
    expect(staleWarnings(raised, { stopped: false, paidUntil: undefined })).toEqual({
      dismiss: [],
      keepSaved: []
    });
  });

  it('compares times it cannot parse as text', () => {
    const odd = { ...tenMinutes, paidUntil: 'soon' };
    expect(staleWarnings([odd], { stopped: false, paidUntil: 'soon' }).dismiss).toEqual([]);
    expect(staleWarnings([odd], { stopped: false, paidUntil: UNTIL }).dismiss).toEqual(['ten']);
  });
});
