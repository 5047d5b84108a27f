"""Machinery shared by the experiments: one small module per concern.

``config``      load ml_collections config files, validate them, serialise them;
``data``        image datasets in memory (Fashion-MNIST idx files, tfds) and batching;
``tfds_stream`` streamed tfds image datasets (ImageNet) through tf.data;
``preprocess``  on-device normalisation and augmentation;
``models``      Flax NNX models (small CNN, ResNet-18/50);
``optim``       optax optimisers, schedules and gradient clipping;
``sharding``    the device mesh and data-parallel placement;
``checkpoint``  orbax checkpoints with automatic resume;
``progress``    progress log lines and the per-run metrics JSONL file;
``trainer``     the train state, the jit'd train step and the training loop;
``metrics``     calibration and support-size statistics;
``results``     the results CSV: one atomic, file-locked row per finished run;
``text``        language-model corpora (KJV Bible, Python docs, C4) through seqio, packed batches;
``text_tasks``  the seqio task definitions behind ``text``;
``transformer`` the decoder-only Transformer (Flax NNX);
``lm``          restoring a trained language model (pre-training or SFT run) from its workdir;
``lm_eval``     next-token metrics of the f-softargmax and of softmax over a validation split;
``generate``    greedy or sampled decoding with either operator;
``instructions`` the reasoning-gym question/answer data for SFT, prompt-masked batches;
``answers``     exact-match evaluation of generated answers;
``reference``   a frozen model's per-token distribution as target or reference measure.
"""
