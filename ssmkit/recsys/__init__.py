"""Sequential recommendation on the shared backbone: RecBole's protocol, Mamba4Rec and its baselines."""
