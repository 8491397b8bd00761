/**
 * What an extension costs, computed exactly as the service holds it.
 *
 * Money is integer units (1 credit = 1000 units); hours are decimals with at
 * most 4 places (the service's rule). The hold is ceil(rate × hours) units
 * (catalog/pricing.py `hold_amount`), done here on BigInt so that no float
 * ever touches an amount. The display has 2 decimals, rounded half-up like
 * the service's `format_amount`, with "≈" when that rounding changed it.
 */
import { ITrans, plainTrans } from './trans';

export const UNITS_PER_CREDIT = 1000n;
/** Digits after the point a number of hours may have (the service's rule). */
export const HOURS_DECIMAL_PLACES = 4;
/** The service refuses more hours than this (a typo guard). */
export const MAX_HOURS = 100000n;
const HOURS_SCALE = 10n ** BigInt(HOURS_DECIMAL_PLACES);

export type Parsed<T> = { value: T; error?: undefined } | { error: string };

/**
 * "1.5" → 15000n (ten-thousandths of an hour) and the text to send ("1.5").
 * A comma works as the decimal point too ("1,5"), for locales that write it so.
 */
export function parseHours(
  text: string,
  trans: ITrans = plainTrans
): Parsed<{ tenThousandths: bigint; text: string }> {
  const cleaned = text.trim().replace(',', '.');
  if (cleaned === '') {
    return { error: trans.__('Enter a number of hours, such as 1.5.') };
  }
  const match = /^(\d*)(?:\.(\d*))?$/.exec(cleaned);
  if (!match || (match[1] === '' && !match[2])) {
    return { error: trans.__('Enter a number of hours, such as 1.5.') };
  }
  const whole = match[1] || '0';
  const fraction = (match[2] || '').replace(/0+$/, '');
  if (fraction.length > HOURS_DECIMAL_PLACES) {
    return {
      error: trans.__('At most %1 digits after the point.', HOURS_DECIMAL_PLACES)
    };
  }
  if (whole.replace(/^0+/, '').length > String(MAX_HOURS).length) {
    return { error: trans.__('At most %1 hours.', String(MAX_HOURS)) };
  }
  const tenThousandths =
    BigInt(whole) * HOURS_SCALE +
    BigInt(fraction.padEnd(HOURS_DECIMAL_PLACES, '0') || '0');
  if (tenThousandths === 0n) {
    return { error: trans.__('Enter more than 0 hours.') };
  }
  if (tenThousandths > MAX_HOURS * HOURS_SCALE) {
    return { error: trans.__('At most %1 hours.', String(MAX_HOURS)) };
  }
  const normalized = fraction
    ? `${BigInt(whole)}.${fraction}`
    : String(BigInt(whole));
  return { value: { tenThousandths, text: normalized } };
}

/** "2.50" (credits, as the service writes amounts) → 2500n units; null if unreadable. */
export function parseUnits(amount: string | null | undefined): bigint | null {
  const match = /^\s*(-?)(\d+)(?:\.(\d{1,3}))?\s*$/.exec(amount ?? '');
  if (!match) {
    return null;
  }
  const units =
    BigInt(match[2]) * UNITS_PER_CREDIT +
    BigInt((match[3] || '').padEnd(3, '0') || '0');
  return match[1] === '-' ? -units : units;
}

/** Units held for `tenThousandths` of an hour at `ratePerHour` units: rounded up. */
export function holdUnits(tenThousandths: bigint, ratePerHour: bigint): bigint {
  const product = tenThousandths * ratePerHour;
  return (product + HOURS_SCALE - 1n) / HOURS_SCALE;
}

/** Units as credits with 2 decimals, half-up; `rounded` when digits were dropped. */
export function formatUnits(units: bigint): { text: string; rounded: boolean } {
  const negative = units < 0n;
  const magnitude = negative ? -units : units;
  const hundredths = (magnitude + 5n) / 10n; // half-up on the dropped thousandth
  const whole = hundredths / 100n;
  const cents = String(hundredths % 100n).padStart(2, '0');
  return {
    text: `${negative ? '-' : ''}${whole}.${cents}`,
    rounded: magnitude % 10n !== 0n
  };
}

/**
 * The cost line under the hours box: "Costs 3.75 cr" or "Costs ≈ 0.42 cr",
 * or why the hours are not acceptable.
 */
export function extensionCost(
  hoursText: string,
  ratePerHour: string | null | undefined,
  trans: ITrans = plainTrans
): Parsed<{
  units: bigint;
  hours: string;
  amount: string;
  rounded: boolean;
  text: string;
}> {
  const hours = parseHours(hoursText, trans);
  if (hours.error !== undefined) {
    return hours;
  }
  const rate = parseUnits(ratePerHour);
  if (rate === null || rate < 0n) {
    return { error: trans.__('This session has no price to extend at.') };
  }
  const units = holdUnits(hours.value.tenThousandths, rate);
  const shown = formatUnits(units);
  const text = shown.rounded
    ? trans.__('Costs ≈ %1 cr', shown.text)
    : trans.__('Costs %1 cr', shown.text);
  return {
    value: {
      units,
      hours: hours.value.text,
      amount: shown.text,
      rounded: shown.rounded,
      text
    }
  };
}
