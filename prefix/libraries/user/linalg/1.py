"""Small numpy helpers shared by the iris algorithms (imported as ``linalg``)."""

import numpy


def mean_std(samples):
    """Per-column mean and standard deviation of a 2-D array (std >= 1e-12)."""

    samples = numpy.asarray(samples, dtype=numpy.float64)
    std = samples.std(axis=0)
    return samples.mean(axis=0), numpy.maximum(std, 1e-12)


def normalise(samples, mean, std):
    """Z-normalises ``samples`` (1-D or 2-D) with the given mean and std."""

    return (numpy.asarray(samples, dtype=numpy.float64) - mean) / std


def lda(samples, labels, n_classes, shrinkage=0.0):
    """Fits a linear discriminant with a shared (pooled) covariance.

    Returns ``(weights, biases)`` such that ``weights @ x + biases`` gives one
    score per class.  ``shrinkage`` in [0, 1] blends the pooled covariance
    with a scaled identity matrix (0 = plain LDA, 1 = nearest class mean).
    """

    samples = numpy.asarray(samples, dtype=numpy.float64)
    labels = numpy.asarray(labels)
    n, dim = samples.shape
    means = numpy.zeros((n_classes, dim))
    priors = numpy.zeros(n_classes)
    scatter = numpy.zeros((dim, dim))
    for k in range(n_classes):
        members = samples[labels == k]
        means[k] = members.mean(axis=0)
        priors[k] = len(members) / float(n)
        centred = members - means[k]
        scatter += centred.T @ centred
    covariance = scatter / float(n - n_classes)
    target = numpy.eye(dim) * (numpy.trace(covariance) / dim)
    covariance = (1.0 - shrinkage) * covariance + shrinkage * target
    weights = numpy.linalg.solve(covariance, means.T).T
    biases = -0.5 * numpy.sum(weights * means, axis=1) + numpy.log(priors)
    return weights, biases
