import {
  OFFSET_TOLERANCE,
  clockOffset,
  nextOffset,
  paidFraction,
  parseInstant,
  secondsLeft
} from '../countdown';

const T0 = Date.parse('2026-03-04T12:00:00Z');

describe('parseInstant', () => {
  it('reads Python ISO times with microseconds and offsets', () => {
    expect(parseInstant('2026-03-04T12:00:00.123456+00:00')).toBe(T0 + 123);
    expect(parseInstant('2026-03-04T12:00:00Z')).toBe(T0);
    expect(parseInstant('2026-03-04T13:00:00+01:00')).toBe(T0);
  });
  it('gives null for nothing or garbage', () => {
    expect(parseInstant(null)).toBeNull();
    expect(parseInstant('')).toBeNull();
    expect(parseInstant('soon')).toBeNull();
  });
});

describe('clockOffset', () => {
  it('is server minus browser at the midpoint of the request', () => {
    // The browser is 90 s behind the server; the request took 200 ms.
    const sent = T0 - 90_000;
    const offset = clockOffset('2026-03-04T12:00:00.100Z', sent, sent + 200);
    expect(offset).toBe(90_000);
  });
  it('is 0 when the server sent no readable time', () => {
    expect(clockOffset(null, T0, T0)).toBe(0);
  });
});

describe('secondsLeft', () => {
  const paidUntil = '2026-03-04T12:10:00Z';
  it('counts on the server clock through the offset', () => {
    // Browser clock 5 min behind: it reads 11:55 when the server says 12:00.
    expect(secondsLeft(paidUntil, T0 - 300_000, 300_000)).toBe(600);
    expect(secondsLeft(paidUntil, T0, 0)).toBe(600);
  });
  it('rounds down and stops at 0', () => {
    expect(secondsLeft(paidUntil, T0 + 1, 0)).toBe(599);
    expect(secondsLeft(paidUntil, T0 + 599_999, 0)).toBe(0);
    expect(secondsLeft(paidUntil, T0 + 3_600_000, 0)).toBe(0);
  });
  it('is null without paid_until', () => {
    expect(secondsLeft(null, T0, 0)).toBeNull();
  });
});

describe('paidFraction', () => {
  it('is the used share of the paid time', () => {
    const ready = '2026-03-04T12:00:00Z';
    const until = '2026-03-04T13:00:00Z';
    expect(paidFraction(ready, until, T0 + 15 * 60_000, 0)).toBeCloseTo(0.25);
    expect(paidFraction(ready, until, T0 - 1000, 0)).toBe(0);
    expect(paidFraction(ready, until, T0 + 7_200_000, 0)).toBe(1);
    expect(paidFraction(null, until, T0, 0)).toBeNull();
  });
});

describe('nextOffset', () => {
  it('takes the first measurement', () => {
    expect(nextOffset(null, 420)).toBe(420);
  });
  it('keeps the offset in use through second-rounding noise', () => {
    expect(nextOffset(0, 900)).toBe(0);
    expect(nextOffset(0, -OFFSET_TOLERANCE)).toBe(0);
  });
  it('follows a real change of either clock', () => {
    expect(nextOffset(0, OFFSET_TOLERANCE + 1)).toBe(OFFSET_TOLERANCE + 1);
    expect(nextOffset(5000, -60_000)).toBe(-60_000);
  });
});
