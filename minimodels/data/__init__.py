"""The data of the course: ShapeWorld and every piece of text made from a scene.

    world         the vocabulary: colours, shapes, sizes, positions, splits, relations, answers
    shapeworld    scenes (sampled or built by hand) and their rendering to images
    captions      captions, short prompts, FOIL captions, hard negatives, Italian captions
    questions     question-answer pairs and referring expressions
    instructions  LLaVA-style instruction data (conversation, description, reasoning, tasks)
    hf            ShapeWorld as a Hugging Face `datasets.Dataset`; any image-caption dataset
    images        uint8 pictures <-> the float tensors models take ([0, 1] or [-1, 1])

Students usually meet all of it through one name, `minimodels.shapeworld`.
"""
