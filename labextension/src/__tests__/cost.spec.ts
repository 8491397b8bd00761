import { extensionCost, formatUnits, holdUnits, parseHours, parseUnits } from '../cost';

describe('parseHours', () => {
  it.each([
    ['1.5', 15000n, '1.5'],
    [' 2 ', 20000n, '2'],
    ['.25', 2500n, '0.25'],
    ['1,5', 15000n, '1.5'],
    ['0.0001', 1n, '0.0001'],
    ['1.50000', 15000n, '1.5'],
    ['007', 70000n, '7'],
    ['100000', 1000000000n, '100000']
  ])('%p → %p ten-thousandths, sent as %p', (text, value, sent) => {
    const parsed = parseHours(text);
    expect(parsed.error).toBeUndefined();
    if (parsed.error === undefined) {
      expect(parsed.value.tenThousandths).toBe(value);
      expect(parsed.value.text).toBe(sent);
    }
  });

  it.each([
    ['', 'Enter a number of hours, such as 1.5.'],
    ['abc', 'Enter a number of hours, such as 1.5.'],
    ['.', 'Enter a number of hours, such as 1.5.'],
    ['-1', 'Enter a number of hours, such as 1.5.'],
    ['1e3', 'Enter a number of hours, such as 1.5.'],
    ['0', 'Enter more than 0 hours.'],
    ['0.00', 'Enter more than 0 hours.'],
    ['0.00001', 'At most 4 digits after the point.'],
    ['100000.5', 'At most 100000 hours.'],
    ['99999999999999999999', 'At most 100000 hours.']
  ])('refuses %p: %p', (text, error) => {
    expect(parseHours(text).error).toBe(error);
  });
});

describe('parseUnits', () => {
  it('reads decimal credits into integer units', () => {
    expect(parseUnits('2.50')).toBe(2500n);
    expect(parseUnits('0.001')).toBe(1n);
    expect(parseUnits('12')).toBe(12000n);
    expect(parseUnits('-1.5')).toBe(-1500n);
    expect(parseUnits('1.2345')).toBeNull();
    expect(parseUnits(null)).toBeNull();
  });
});

describe('holdUnits / formatUnits', () => {
  it('rounds the hold up, like the service', () => {
    // 1 h at 2.50/h = 2500 units exactly; 0.0001 h at 2.50/h = 0.25 units → 1.
    expect(holdUnits(10000n, 2500n)).toBe(2500n);
    expect(holdUnits(1n, 2500n)).toBe(1n);
    expect(holdUnits(3333n, 1000n)).toBe(334n); // 333.3 units → 334
  });
  it('shows 2 decimals half-up and says when it rounded', () => {
    expect(formatUnits(3750n)).toEqual({ text: '3.75', rounded: false });
    expect(formatUnits(334n)).toEqual({ text: '0.33', rounded: true });
    expect(formatUnits(335n)).toEqual({ text: '0.34', rounded: true });
    expect(formatUnits(0n)).toEqual({ text: '0.00', rounded: false });
    expect(formatUnits(123456789n)).toEqual({ text: '123456.79', rounded: true });
  });
  it('stays exact where floats would not', () => {
    // 0.1 + 0.2 style traps: 3 × 0.1 h at 0.10/h is 0.03, not 0.030000000000000006.
    expect(extensionCost('0.3', '0.10').error).toBeUndefined();
    const cost = extensionCost('0.3', '0.10');
    expect(cost.error === undefined && cost.value.text).toBe('Costs 0.03 cr');
    // 100000 h at 999999.999/h: beyond 2^53 units, still exact.
    const huge = extensionCost('100000', '999999.999');
    expect(huge.error === undefined && huge.value.units).toBe(99999999900000n);
  });
});

describe('extensionCost', () => {
  it('prices the hours at the session rate', () => {
    const cost = extensionCost('1.5', '2.50');
    expect(cost.error).toBeUndefined();
    if (cost.error === undefined) {
      expect(cost.value).toEqual({
        units: 3750n,
        hours: '1.5',
        amount: '3.75',
        rounded: false,
        text: 'Costs 3.75 cr'
      });
    }
  });
  it('marks a rounded cost with ≈', () => {
    const cost = extensionCost('0.3333', '1.00');
    expect(cost.error === undefined && cost.value.text).toBe('Costs ≈ 0.33 cr');
  });
  it('passes on why the hours are wrong, and refuses without a rate', () => {
    expect(extensionCost('x', '2.50').error).toBe('Enter a number of hours, such as 1.5.');
    expect(extensionCost('1', null).error).toBe('This session has no price to extend at.');
  });
});
