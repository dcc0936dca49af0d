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
%   REFMET_TANG      Tang's folder 'General Evaluation Metric/Evaluation/' (analysis_Reference.m and the metric
%                    files it calls)
%   REFMET_FMI       the folder holding Haghighat's fmi.m
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
%   Tang (Evaluation_for_Single_Image.m -> analysis_Reference(fused_image, ir_image, vi_image, easy)): each metric
%                              called as analysis_Reference calls it, with image_ir = A, image_vis = B, image_f = F
%                              (uint8 as read); every metric on its own, so that one failure does not hide the
%                              others. analysis_Reference(F, A, B, 1) itself is also run (CHECK lines) so that the
%                              generator can confirm the per-metric calls give the same numbers.
%   Haghighat (README.md):     nfmi = fmi(ima, imb, imf, feature, w) with A, B, F uint8 as read (fmi.m applies
%                              double() itself).
%
% Further output lines of the Tang section:
%   CHECK    <case>  <output name>  <value printed with %.17g>   (from analysis_Reference(F, A, B, 1))
%   CHECKERR <case>  <error message>

pkg load image;

data_dir    = getenv('REFMET_DATA');
vifb_dir    = getenv('REFMET_VIFB');
liu_dir     = getenv('REFMET_LIU');
patched_dir = getenv('REFMET_PATCHED');
tang_dir    = getenv('REFMET_TANG');
fmi_dir     = getenv('REFMET_FMI');
if isempty(data_dir) || isempty(vifb_dir) || isempty(liu_dir) || isempty(patched_dir) || isempty(tang_dir) ...
   || isempty(fmi_dir)
  error('run_references: REFMET_DATA, REFMET_VIFB, REFMET_LIU, REFMET_PATCHED, REFMET_TANG and REFMET_FMI must be set');
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

% ---- Tang's evaluation code (Linfeng-Tang/Image-Fusion, 'General Evaluation Metric/Evaluation/') -------------
% Evaluation_for_Single_Image.m reads ir_image (source 1) and vi_image (source 2) with imread (rgb2gray only for
% colour images) and calls analysis_Reference(fused_image, ir_image, vi_image, easy); easy = 1 gives EN, SF, SD,
% PSNR, MSE, MI, VIF, AG, CC, SCD and Qabf, easy = 0 gives Nabf, SSIM, MS_SSIM, FMI_pixel, FMI_dct and FMI_w.
% The statements below repeat analysis_Reference's, one metric at a time.
tang_fns = {'analysis_Reference', 'SF_evaluation', 'SD_evaluation', 'PSNR_evaluation', 'MSE_evaluation', ...
            'MI_evaluation', 'Hab', 'vifp_mscale', 'AG_evaluation', 'CC_evaluation', 'analysis_SCD', ...
            'analysis_Qabf', 'analysis_nabf', 'sobel_fn', 'per_extn_im_fn', 'mef_ssim', 'analysis_ms_ssim', ...
            'analysis_fmi'};
tang_easy = {'EN', 'SF', 'SD', 'PSNR', 'MSE', 'MI', 'VIF', 'AG', 'CC', 'SCD', 'Qabf'};
addpath(tang_dir);
for k = 1:numel(tang_fns)
  fprintf(1, 'WHICH\t%s\t%s\n', tang_fns{k}, clean(which(tang_fns{k})));
end
for c = 1:numel(names)
  image_ir = imgs(c).A;  image_vis = imgs(c).B;  image_f = imgs(c).F;
  % as in analysis_Reference:
  grey_level = 256;
  [s1, s2] = size(image_ir);
  imgSeq = zeros(s1, s2, 2);
  imgSeq(:, :, 1) = image_ir;
  imgSeq(:, :, 2) = image_vis;
  image1 = im2double(image_ir);
  image2 = im2double(image_vis);
  image_fused = im2double(image_f);
  % easy == 1
  emit(names{c}, 'Tang/EN', @() entropy(image_f));
  emit(names{c}, 'Tang/SF', @() SF_evaluation(image_fused));
  emit(names{c}, 'Tang/SD', @() SD_evaluation(image_f));
  emit(names{c}, 'Tang/PSNR', @() PSNR_evaluation(image1, image2, image_fused));
  emit(names{c}, 'Tang/MSE', @() MSE_evaluation(image1, image2, image_fused));
  emit(names{c}, 'Tang/MI', @() MI_evaluation(image_ir, image_vis, image_f, grey_level));
  emit(names{c}, 'Tang/VIF', @() vifp_mscale(image_ir, image_f) + vifp_mscale(image_vis, image_f));
  % The same vifp_mscale.m (Sheikh & Bovik's) on double images, as its authors' own example calls it
  % (ref = double(imread(...))): the VIF the metric defines, without uint8 saturation of the squares.
  emit(names{c}, 'Sheikh/vifp_mscale_double', ...
       @() vifp_mscale(double(image_ir), double(image_f)) + vifp_mscale(double(image_vis), double(image_f)));
  emit(names{c}, 'Tang/AG', @() AG_evaluation(image_f));
  emit(names{c}, 'Tang/CC', @() CC_evaluation(image1, image2, image_fused));
  emit(names{c}, 'Tang/SCD', @() analysis_SCD(image1, image2, image_fused));
  emit(names{c}, 'Tang/Qabf', @() analysis_Qabf(image1, image2, image_fused));
  % easy == 0
  emit(names{c}, 'Tang/Nabf', @() analysis_nabf(image_fused, image1, image2));
  emit(names{c}, 'Tang/SSIM', @() mef_ssim(imgSeq, image_f));
  emit(names{c}, 'Tang/MS_SSIM', @() analysis_ms_ssim(imgSeq, image_f));
  emit(names{c}, 'Tang/FMI_pixel', @() analysis_fmi(image1, image2, image_fused));
  emit(names{c}, 'Tang/FMI_dct', @() analysis_fmi(image1, image2, image_fused, 'dct'));
  emit(names{c}, 'Tang/FMI_w', @() analysis_fmi(image1, image2, image_fused, 'wavelet'));
  % analysis_Reference itself, easy = 1 (easy = 0 stops at FMI_dct: see fixtures.json)
  try
    out = cell(1, numel(tang_easy));
    [out{:}] = analysis_Reference(image_f, image_ir, image_vis, 1);
    for k = 1:numel(tang_easy)
      fprintf(1, 'CHECK\t%s\t%s\t%.17g\n', names{c}, tang_easy{k}, out{k});
    end
  catch err
    fprintf(1, 'CHECKERR\t%s\t%s\n', names{c}, clean(err.message));
  end
end
rmpath(tang_dir);

% ---- Haghighat's fmi.m (mhaghighat/fmi) ------------------------------------------------------------------------
% nfmi is already the mean over the two sources: mean2 of (fmi_af + fmi_bf)/2 over the windows.
addpath(fmi_dir);
fprintf(1, 'WHICH\tfmi\t%s\n', clean(which('fmi')));
for c = 1:numel(names)
  ima = imgs(c).A;  imb = imgs(c).B;  imf = imgs(c).F;
  emit(names{c}, 'Haghighat/fmi_gradient_w3', @() fmi(ima, imb, imf, 'gradient', 3));
  emit(names{c}, 'Haghighat/fmi_none_w3', @() fmi(ima, imb, imf, 'none', 3));
  emit(names{c}, 'Haghighat/fmi_dct_w3', @() fmi(ima, imb, imf, 'dct', 3));
  emit(names{c}, 'Haghighat/fmi_default', @() fmi(ima, imb, imf));
end
rmpath(fmi_dir);

fprintf(1, 'DONE\n');
