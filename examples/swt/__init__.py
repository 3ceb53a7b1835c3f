"""The reference workload: a EUR/USD trading agent (wavelet features, HOLD/BUY/SELL/CLOSE, PPO) trained
under trainguard - the kind of run the incident report is about."""
