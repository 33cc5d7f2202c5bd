"""The disputes room: a party's claim over a trade, the evidence both sides and the exchange
bring, and the one resolution that moves the money (issue 21). It replaces settlement's old
all-or-nothing objection.

The room never imports settlement, orders, listings, delivery or compute: what it needs of them
comes through `exchange.disputes.hooks.DisputeHooks`, which the composition root
(`exchange.wiring.disputes`) fills in.
"""
