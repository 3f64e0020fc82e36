// Phones provisioned by IP address: which Request-URIs name midreg itself, and what the registrar
// gets instead (lib/sip/own-address.ts).
import { strict as assert } from 'node:assert';
import { describe, it } from 'node:test';
import { namesMidreg, retargetToUpstream } from '../../lib/sip/own-address.js';
import { parseUri, type SipUri } from '../../lib/sip/drachtio.js';

const uri = (text: string): SipUri => {
  const parsed = parseUri(text);
  assert.ok(parsed, text);
  return parsed;
};
const own = { sipAddresses: ['udp/10.0.0.2:5060', 'tcp/10.0.0.2:5060', 'udp/127.0.0.1:5080', 'udp/[2001:db8::2]:5060'], domains: ['example.com', '203.0.113.5', '[2001:db8::5]'] };

describe('which Request-URIs name midreg itself', () => {
  it('drachtio-server\'s own addresses, by its own rule: host and port, no port means 5060, localhost is 127.0.0.1', () => {
    assert.ok(namesMidreg(uri('sip:10.0.0.2'), own));
    assert.ok(namesMidreg(uri('sip:1001@10.0.0.2:5060'), own));
    assert.ok(namesMidreg(uri('sip:127.0.0.1:5080'), own));
    assert.ok(namesMidreg(uri('sip:bob@localhost:5080'), own));
    assert.ok(namesMidreg(uri('sip:[2001:db8::2]'), own));
    assert.ok(!namesMidreg(uri('sip:127.0.0.1'), own), '127.0.0.1 listens on 5080, not 5060');
    assert.ok(!namesMidreg(uri('sip:10.0.0.2:5070'), own), 'another service on the same host');
  });

  it('an IP literal in MIDREG_DOMAINS (midreg\'s address as phones were given it), whatever the port', () => {
    assert.ok(namesMidreg(uri('sip:203.0.113.5'), own));
    assert.ok(namesMidreg(uri('sip:1001@203.0.113.5:5090'), own));
    assert.ok(namesMidreg(uri('sip:bob@[2001:db8::5]:5060'), own));
  });

  it('not a domain name, nor a host that is neither ours nor served', () => {
    assert.ok(!namesMidreg(uri('sip:example.com'), own), 'a named domain is the registrar\'s to interpret');
    assert.ok(!namesMidreg(uri('sip:1001@example.com'), own));
    assert.ok(!namesMidreg(uri('sip:bob@192.0.2.9:5062'), own), 'a phone\'s contact');
  });
});

describe('what the registrar gets instead', () => {
  it('REGISTER: the registrar\'s own URI, transport kept, lr dropped', () => {
    assert.equal(retargetToUpstream(uri('sip:203.0.113.5:5060'), 'sip:10.0.0.5:5080;transport=tcp;lr'), 'sip:10.0.0.5:5080;transport=tcp');
    assert.equal(retargetToUpstream(uri('sip:127.0.0.1:5080'), 'sip:pbx.example.net'), 'sip:pbx.example.net');
  });

  it('other requests keep the user part and user parameters; the hop parameters to midreg go', () => {
    assert.equal(retargetToUpstream(uri('sip:1001@203.0.113.5:5060;transport=udp'), 'sip:10.0.0.5:5080'), 'sip:1001@10.0.0.5:5080');
    assert.equal(retargetToUpstream(uri('sip:+4930123@203.0.113.5;user=phone'), 'sip:10.0.0.5'), 'sip:+4930123@10.0.0.5;user=phone');
    assert.equal(retargetToUpstream(uri('sips:bob@[2001:db8::5]'), 'sips:[2001:db8::9]:5061'), 'sips:bob@[2001:db8::9]:5061');
  });
});
