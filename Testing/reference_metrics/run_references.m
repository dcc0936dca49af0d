% run_references.m -- evaluate published MATLAB fusion-metric code on the MedFusion test cases.
%
% This is MedFusion's own driver script; it contains no reference code. It is run under GNU Octave
% by generate_fixtures.py, which sets these environment variables (all absolute paths):
%
%   REFMET_DATA      folder holding cases.txt (one case name per line) and <case>/A.png, B.png, F.png
%                    (8-bit greyscale PNG files)
%   REFMET_VIFB      the VIFB folder metrics/ (metricsAvg_gradient.m, metricsQabf.m, ...)
%   REFMET_LIU       the imageFusionMetrics folder (metricXydeas.m, metricPeilla.m, ssim_index.m), as published
%   REFMET_PATCHED   a temporary folder holding only the patched copy of metricPeilla.m
%
% Every result goes to standard output as one tab-separated line:
%   VERSION  <name>  <version>
%   IMAGE    <case>  <A|B|F>  <class>  <rows>  <cols>  <sum>  <sum of value * linear index>
%   VALUE    <case>  <metric>  <value printed with %.17g>
%   ERROR    <case>  <metric>  <error message>
%   WHICH    <function>  <file it resolved to>
%   DONE
%
% The calls mirror the toolboxes' own drivers:
%   VIFB (compute_metrics.m):  res = metricsX(imgVI, imgIR, sFused), the three images as returned by imread (uint8);
%                              here imgVI = A, imgIR = B, sFused = F.
%   Liu (fusionAssess.m):      im1 = double(im1); im2 = double(im2); metricX(im1, im2, fused) -- fusionAssess
%                              leaves the fused image as passed in; double() is applied to it here as well.

pkg load image;

data_dir    = getenv('REFMET_DATA');
vifb_dir    = getenv('REFMET_VIFB');
liu_dir     = getenv('REFMET_LIU');
patched_dir = getenv('REFMET_PATCHED');
if isempty(data_dir) || isempty(vifb_dir) || isempty(liu_dir) || isempty(patched_dir)
  error('run_references: REFMET_DATA, REFMET_VIFB, REFMET_LIU and REFMET_PATCHED must be set');
end

clean = @(s) regexprep(s, '[\t\r\n]+', ' ');

pinfo = pkg('list', 'image');
fprintf(1, 'VERSION\toctave\t%s\n', version());
fprintf(1, 'VERSION\timage\t%s\n', pinfo{1}.version);

% ---- read the cases --------------------------------------------------------------------------
fid = fopen(fullfile(data_dir, 'cases.txt'), 'r');
names = {};
line = fgetl(fid);
while ischar(line)
  line = strtrim(line);
  if ~isempty(line)
    names{end+1} = line;
  end
  line = fgetl(fid);
end
fclose(fid);

imgs = struct('A', {}, 'B', {}, 'F', {});
for c = 1:numel(names)
  for tag = {'A', 'B', 'F'}
    t = tag{1};
    im = imread(fullfile(data_dir, names{c}, [t '.png']));
    imgs(c).(t) = im;
    v = double(im(:));
    fprintf(1, 'IMAGE\t%s\t%s\t%s\t%d\t%d\t%.17g\t%.17g\n', names{c}, t, class(im), size(im, 1), ...
            size(im, 2), sum(v), sum(v .* (1:numel(v))'));
  end
end

function emit(case_name, metric, fn)
  % Evaluate fn() and print its value, or the error it raised.
  try
    res = fn();
    if ~(isnumeric(res) && isscalar(res))
      fprintf(1, 'ERROR\t%s\t%s\t%s\n', case_name, metric, ...
              sprintf('result is not a numeric scalar (class %s, size %s)', class(res), mat2str(size(res))));
    elseif ~isreal(res)
      fprintf(1, 'ERROR\t%s\t%s\tcomplex result %.17g%+.17gi\n', case_name, metric, real(res), imag(res));
    else
      fprintf(1, 'VALUE\t%s\t%s\t%.17g\n', case_name, metric, res);
    end
  catch err
    fprintf(1, 'ERROR\t%s\t%s\t%s\n', case_name, metric, regexprep(err.message, '[\t\r\n]+', ' '));
  end
end

% ---- VIFB --------------------------------------------------------------------------------------
vifb_metrics = {'Avg_gradient', 'Cross_entropy', 'Edge_intensity', 'Entropy', 'Mutinf', 'Psnr', 'Qabf', ...
                'Qcb', 'Qcv', 'Rmse', 'Spatial_frequency', 'Ssim', 'Variance'};
addpath(vifb_dir);
for k = 1:numel(vifb_metrics)
  fname = ['metrics' vifb_metrics{k}];
  fprintf(1, 'WHICH\t%s\t%s\n', fname, clean(which(fname)));
end
for c = 1:numel(names)
  imgVI = imgs(c).A;  imgIR = imgs(c).B;  sFused = imgs(c).F;
  for k = 1:numel(vifb_metrics)
    fname = ['metrics' vifb_metrics{k}];
    emit(names{c}, ['VIFB/' fname], @() feval(fname, imgVI, imgIR, sFused));
  end
end
rmpath(vifb_dir);

% ---- Liu's imageFusionMetrics, as published --------------------------------------------------
addpath(liu_dir);
fprintf(1, 'WHICH\tmetricXydeas\t%s\n', clean(which('metricXydeas')));
fprintf(1, 'WHICH\tmetricPeilla\t%s\n', clean(which('metricPeilla')));
fprintf(1, 'WHICH\tssim_index\t%s\n', clean(which('ssim_index')));
for c = 1:numel(names)
  im1 = double(imgs(c).A);  im2 = double(imgs(c).B);  fused = double(imgs(c).F);
  emit(names{c}, 'Liu/metricXydeas', @() metricXydeas(im1, im2, fused));
  emit(names{c}, 'Liu/metricPeilla_sw1', @() metricPeilla(im1, im2, fused, 1));
  emit(names{c}, 'Liu/metricPeilla_sw2', @() metricPeilla(im1, im2, fused, 2));
  % As published, case 3 reads Q before assigning it; this records the error it raises.
  emit(names{c}, 'Liu/metricPeilla_sw3_unpatched', @() metricPeilla(im1, im2, fused, 3));
end

% ---- Liu's metricPeilla, case 3, from the patched copy -------------------------------------------
addpath(patched_dir);            % in front of liu_dir: the patched metricPeilla.m shadows the original
clear('metricPeilla');
fprintf(1, 'WHICH\tmetricPeilla_patched\t%s\n', clean(which('metricPeilla')));
for c = 1:numel(names)
  im1 = double(imgs(c).A);  im2 = double(imgs(c).B);  fused = double(imgs(c).F);
  emit(names{c}, 'Liu/metricPeilla_sw3_patched', @() metricPeilla(im1, im2, fused, 3));
end
rmpath(patched_dir);
rmpath(liu_dir);

fprintf(1, 'DONE\n');
