"""Model families: ZSE-SBIR (`sbir.models.zse`) and CLIP-AT (`sbir.models.clip_at`); built through `sbir.methods`.

>>> from sbir.methods import family_of
>>> model = family_of(config).build_model(config.model)
"""
