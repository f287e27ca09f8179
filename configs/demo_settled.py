"""The demo with the search recipe that settles in its band (RESULTS.md, "Targets 0.3 and 0.7").

    python -m tas_jax.main --config=configs/demo_settled.py --workdir=runs/settled \
        --config.target.flop_ratio=0.3

On the embedded data it met all four of issue 10's criteria at targets 0.3 and 0.7 (seeds 0 and 1;
at 0.5 on seeds 1 and 2, and missed by 0.001 on seed 0): F(A) in the band at each of the last three
epochs, |E[F] − F(A)| <= 0.05·F_max, mean width max-probability >= 0.5, supernet training accuracy
>= 65%. Three deviations from the released search, each for a short search:
- no weight decay on the architecture logits (under Adam the coupled L2 pulls every logit towards
  the uniform distribution with a steady step, so the distributions never decide);
- the architecture lr held at 0.2, then cosine to 0 over the last 10 epochs: the argmax stops
  moving;
- `in_band=centred`: while F(A) is in the band, E[F] above the band's centre is pushed down, so E[F]
  settles at the centre instead of sliding along the band's top edge.
A settled search did not give a more accurate network after KD at this budget (RESULTS.md).
"""

from configs import demo


def get_config():
  c = demo.get_config()
  c.search.epochs = 40
  c.search.arch_lr = 0.2
  c.search.arch_weight_decay = 0.0
  c.search.arch_cooldown_epochs = 10
  c.search.in_band = "centred"
  return c.lock()  # a misspelt field raises (with "did you mean")
