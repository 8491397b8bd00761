import {
  formatAmount,
  formatDuration,
  formatElapsed,
  formatTime,
  formatTimeLeft
} from '../format';
import { ITrans } from '../trans';

describe('formatAmount', () => {
  it('shows the service decimal string with the unit', () => {
    expect(formatAmount('112.50')).toBe('112.50 cr');
    expect(formatAmount('0.00')).toBe('0.00 cr');
    expect(formatAmount('-3.25')).toBe('-3.25 cr');
  });
  it('shows a dash for a missing amount', () => {
    expect(formatAmount(null)).toBe('—');
    expect(formatAmount(undefined)).toBe('—');
    expect(formatAmount('')).toBe('—');
  });
});

describe('formatDuration / formatTimeLeft', () => {
  it.each([
    [2 * 3600 + 13 * 60 + 59, '2 h 13 min left'],
    [3600, '1 h left'],
    [3600 + 60, '1 h 1 min left'],
    [59 * 60 + 59, '59 min left'],
    [600, '10 min left'],
    [599, '9 min 59 s left'],
    [4 * 60 + 5, '4 min 05 s left'],
    [60, '1 min 00 s left'],
    [59, '59 s left'],
    [1, '1 s left'],
    [0, '0 s left'],
    [-5, '0 s left'],
    [NaN, '0 s left'],
    [42.9, '42 s left']
  ])('%p seconds → %p', (seconds, words) => {
    expect(formatTimeLeft(seconds)).toBe(words);
  });

  it('goes through the translator', () => {
    const calls: string[] = [];
    const trans: ITrans = {
      __: (msgid, ...args) => {
        calls.push(msgid);
        return `<${msgid}|${args.join(',')}>`;
      },
      _n: msgid => msgid
    };
    expect(formatDuration(125, trans)).toBe('<%1 min %2 s|2,05>');
    expect(formatAmount('1.00', trans)).toBe('<%1 cr|1.00>');
    expect(calls).toEqual(['%1 min %2 s', '%1 cr']);
  });
});

describe('formatElapsed', () => {
  it.each([
    [0, '<1 s'],
    [0.49, '<1 s'],
    [0.5, '1 s'],
    [0.93, '1 s'],
    [1.4, '1 s'],
    [1.6, '2 s'],
    [59.5, '1 min 00 s'],
    [4 * 60 + 4.7, '4 min 05 s'],
    [2 * 3600 + 13 * 60 + 59.6, '2 h 14 min'],
    [-1, '—'],
    [NaN, '—']
  ])('a run of %p seconds → %p', (seconds, words) => {
    expect(formatElapsed(seconds)).toBe(words);
  });

  it('rounds where the countdown rounds down', () => {
    expect(formatDuration(0.93)).toBe('0 s');
    expect(formatElapsed(0.93)).toBe('1 s');
  });
});

describe('formatTime', () => {
  it('shows only the time for today and the date otherwise', () => {
    const now = new Date('2026-03-04T12:00:00Z');
    const today = formatTime('2026-03-04T11:05:00Z', now, 'en-GB');
    const earlier = formatTime('2026-02-01T11:05:00Z', now, 'en-GB');
    expect(today).toMatch(/^\d\d:\d\d$/);
    expect(earlier).toMatch(/2026/);
    expect(earlier).not.toBe(today);
  });
  it('shows a dash for a missing or unreadable time', () => {
    expect(formatTime(null)).toBe('—');
    expect(formatTime('not a time')).toBe('—');
  });
});
