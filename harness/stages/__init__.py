"""One module per pipeline stage, each a function of (run directory, configuration) → its output files:
bench, activations, transcripts, crosscoder, latents, attribution, causal, report. The modules beside them
hold each stage's domain logic (corpus, latent sums, annotators, measures, interventions, paired tests)."""
