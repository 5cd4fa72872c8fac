"""The book's laboratory: experiment drivers, benchmarks and comparisons, apart from the detector.

Nothing in the detector (`fasterrcnn_edu` outside this subpackage) imports from here. Each module
drives one chapter's measurements and is a verb of `python -m fasterrcnn_edu`:

* `pretrain` (``pretrain``): the book's stand-in for ImageNet pre-training (step 0);
* `experiments` (``lambda-sweep``): chapter 3's RPN-only runs and loss illustrations;
* `ablations` (``ablation recall|test-time|anchors``): chapters 6-8's ablations;
* `baselines`: non-learned proposal baselines (sliding windows, Selective Search);
* `profiling` (``profile``) and `bench` (``bench``): chapter 9's timings and the torchvision comparison;
* `side_by_side` (``side-by-side``): ours and torchvision's detector trained on the same batches;
* `records`: how every result file records its command, machine and inputs.
"""
