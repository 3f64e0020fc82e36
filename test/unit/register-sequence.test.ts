import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';
import { RegisterSequence } from '../../lib/registrar/register-sequence.js';

describe('register sequence (highest CSeq applied per AoR and Call-ID)', () => {
  it('remembers the highest CSeq applied, per AoR and Call-ID', () => {
    const seq = new RegisterSequence(10_000);
    seq.record('sip:a@example.test', 'call-1', 5, 0);
    seq.record('sip:a@example.test', 'call-1', 3, 1);
    assert.equal(seq.lastApplied('sip:a@example.test', 'call-1', 2), 5, 'an older CSeq never lowers it');
    assert.equal(seq.lastApplied('sip:a@example.test', 'call-2', 2), undefined, 'another Call-ID is independent');
    assert.equal(seq.lastApplied('sip:b@example.test', 'call-1', 2), undefined, 'another AoR is independent');
  });

  it('forgets an entry once no crossing reply can arrive, so memory stays bounded', () => {
    const seq = new RegisterSequence(1000);
    for (let i = 0; i < 500; i++) seq.record(`sip:u${i}@example.test`, 'c', 1, i);
    assert.equal(seq.lastApplied('sip:u499@example.test', 'c', 1200), 1);
    assert.equal(seq.lastApplied('sip:u0@example.test', 'c', 1200), undefined);
    assert.equal(seq.size, 299, 'only replies applied within the last second are kept');
    seq.record('sip:u10@example.test', 'c', 2, 1400);
    assert.equal(seq.lastApplied('sip:u10@example.test', 'c', 2300), 2, 'a refresh extends the entry');
    assert.equal(seq.size, 1);
  });
});
