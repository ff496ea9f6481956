"""OWL-ST pseudo-annotation (task pseudo-label), the parts that need no model.

queries     caption -> detection queries (word n-grams, stop and generic words dropped)
vocabulary  curated class names from inline names and/or a file, cleaned and counted
filtering   whether an image is kept, and the sentence saying why not
report      the end-of-job counts (images and boxes at several thresholds, top labels)
data/       the shipped stop-word and generic-word lists

The model side is labeler.models.owlv2_pseudo.Owlv2PseudoLabeler.
"""
