"""Every touch of aiortc's private internals, in one place, loaded only where it is used.

Rapport forwards encoded frames through aiortc 1.16.0 by replacing a few private parts of it
(docs/adr/0001-forwarding-on-aiortc-internals.md says why and what guards it):

- ``pin``: the aiortc version the replacements were validated against;
- ``guard``: ``check_internals()`` (reads the exact aiortc source lines relied on) and
  ``require()``, which raises ``ForwardingUnavailable`` on any mismatch;
- ``forwarding``: the functional hooks (receiver, jitter buffer, sender encoder slot,
  RTCP observers). Importing it runs ``guard.require()``, so it cannot be used on an aiortc
  it was not written for;
- ``prflx``: holds the sources of incoming ICE checks (peer-reflexive candidates) to the
  candidate filter's rule, on every peer; installs nothing when its checks fail;
- ``speed``: equivalent, cheaper replacements for aiortc's clock and bandwidth-estimator
  loops, patched in only by an explicit ``speed.install()``.

This package imports none of its modules itself: ``import media.aiortc_compat.speed`` does
not load the forwarding hooks, and nothing in ``media`` or ``server`` imports any of it at
import time. ``media.relay`` loads ``forwarding`` inside the forwarding code path only, so
with ``RAPPORT_RELAY_MODE=transcode`` a mismatched aiortc cannot stop a call.
"""
