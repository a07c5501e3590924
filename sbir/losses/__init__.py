"""Training losses: ZSE-SBIR (`sbir.losses.zse`) and CLIP-AT (`sbir.losses.clip_at`)."""
