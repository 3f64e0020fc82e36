// Offline messages, the pure decisions: whether a MESSAGE for a user with no live binding is kept
// for later delivery or refused, how long to wait before the next delivery attempt, and the Date a
// kept message carries. No I/O here.

export interface OfflineLimits {
  ttlSec: number;
  maxPerRecipient: number;
  maxBytesPerRecipient: number;
  maxTotalBytes: number;
  /** Messages one sender may have stored per minute. */
  senderPerMinute: number;
}

export type OfflineAdmission =
  | { kind: 'store' }
  | { kind: 'refuse'; status: 404 | 480 | 486; reason: string; why: string; retryAfterSec?: number };

export interface OfflineRequest {
  /** The registrar has accepted this AoR at least once. */
  recipientKnown: boolean;
  queue: { messages: number; bytes: number };
  totalBytes: number;
  messageBytes: number;
  /** Takes one of the sender's tokens (SenderRate.take); asked only for a known recipient. */
  senderWithinRate: () => boolean;
}

/**
 * RFC 3428 §7: a 202 means "accepted for later delivery". Only an AoR the registrar has accepted
 * gets one, never an arbitrary user (that keeps today's 404/480, RFC 3261 §21.4.18). Past a bound
 * the sender gets 486 Busy Here, RFC 3261 §21.4.24: the user "is currently not willing or able to
 * take additional" requests; nothing already stored is dropped to make room. 486 may carry
 * Retry-After (§20.33), which the sender rate uses.
 */
export function admitOffline(req: OfflineRequest, limits: OfflineLimits, noBindingStatus: 404 | 480): OfflineAdmission {
  if (!req.recipientKnown) {
    return { kind: 'refuse', status: noBindingStatus, reason: noBindingStatus === 404 ? 'Not Found' : 'Temporarily Unavailable', why: 'never registered: messages are kept only for users the registrar accepted' };
  }
  if (!req.senderWithinRate()) {
    return { kind: 'refuse', status: 486, reason: 'Too Many Offline Messages', why: `sender over ${limits.senderPerMinute} stored messages a minute (MIDREG_OFFLINE_SENDER_RATE)`, retryAfterSec: 60 };
  }
  if (req.queue.messages + 1 > limits.maxPerRecipient) {
    return { kind: 'refuse', status: 486, reason: 'Offline Mailbox Full', why: `recipient has ${req.queue.messages} messages waiting (MIDREG_OFFLINE_MAX_PER_USER)` };
  }
  if (req.queue.bytes + req.messageBytes > limits.maxBytesPerRecipient) {
    return { kind: 'refuse', status: 486, reason: 'Offline Mailbox Full', why: `recipient has ${req.queue.bytes} bytes waiting (MIDREG_OFFLINE_MAX_BYTES_PER_USER)` };
  }
  if (req.totalBytes + req.messageBytes > limits.maxTotalBytes) {
    return { kind: 'refuse', status: 486, reason: 'Offline Store Full', why: `${req.totalBytes} bytes stored for all users (MIDREG_OFFLINE_MAX_TOTAL_BYTES)` };
  }
  return { kind: 'store' };
}

/** After a failed delivery attempt: 30 s, doubling, at most an hour (the time to live still ends it). */
export function retryDelayMs(attempts: number): number {
  return Math.min(30_000 * 2 ** Math.min(attempts, 10), 3_600_000);
}

/** RFC 3261 §20.17: Date in the RFC 1123 form, always GMT. */
export function sipDate(at: number): string {
  return new Date(at).toUTCString();
}

/** Per-sender budget of stored messages: `perMinute` tokens, refilled continuously. */
export class SenderRate {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();

  constructor(private readonly perMinute: number, private readonly maxSenders = 100_000) {}

  /** Take one token for `sender`; false when it has none left. */
  take(sender: string, now: number): boolean {
    const bucket = this.buckets.get(sender) ?? { tokens: this.perMinute, at: now };
    bucket.tokens = Math.min(this.perMinute, bucket.tokens + ((now - bucket.at) * this.perMinute) / 60_000);
    bucket.at = now;
    if (bucket.tokens < 1) { this.buckets.set(sender, bucket); return false; }
    bucket.tokens -= 1;
    // Bounded memory: a full bucket carries no state worth keeping.
    if (this.buckets.size >= this.maxSenders) this.buckets.clear();
    this.buckets.set(sender, bucket);
    return true;
  }
}
