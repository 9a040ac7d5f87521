"""Engines: where the clients' local training runs (the DESIGN's Engine / backend noun).

A topology hands an engine the clients' shards and a start state and gets their trained
weights back chunk by chunk, stacked [clients, ...]; it does not care how they were computed:
- `sequential`: one model and one trainer per worker, rebound to each client in turn (the
  reference path; per-client trainers only where a local-training defense keeps per-client
  state, as DP-SGD's accountant does);
- `vectorised`: clients that share an architecture train together as batched matrix products
  over stacked parameters, unequal client sizes handled exactly by masking;
- `ray`: variants and reference-model groups as Ray tasks (optional extra `privlab[ray]`;
  privlab.fanout runs the same units over local worker processes without Ray), and with
  `client_tasks` a round's clients too (`ray_clients`: any of the above engines, in Ray tasks).
The vectorised engine also trains LiRA/RMIA reference models (privlab.reference_training).
This package imports no attack or defense.
"""
